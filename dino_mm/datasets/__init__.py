# Task datasets that import mmseg / mmdet (depth.py, segmentation.py, detection.py) are
# not imported here; the registries find them through their `locations`.
from .base import EntriesDataset, SkipCorruptMixin
from .captions import CocoCaptionsDataset
from .collate import dino_collate
from .image_folder import ImageFolderDataset
from .imagenet import ImageNet, dump_imagenet_extra
from .imagenet22k import ImageNet22k, dump_imagenet22k_extra
from .multi_resolution import MultiResolutionBatchSampler, MultiResolutionDataset
from .samplers import SeededInfiniteSampler
from .transforms import *  # noqa: F401,F403
from .transforms import __all__ as _transforms_all

__all__ = [
    'EntriesDataset', 'SkipCorruptMixin', 'dino_collate', 'ImageFolderDataset', 'ImageNet',
    'dump_imagenet_extra', 'ImageNet22k', 'dump_imagenet22k_extra', 'SeededInfiniteSampler',
    'MultiResolutionDataset', 'MultiResolutionBatchSampler', 'CocoCaptionsDataset'
] + _transforms_all
