# Detection glue for mmdet's DETR-style detectors (imports mmdet through the datasets).
from dino_mm.datasets.detection import CheckedCocoDataset
from .neck import LayerNorm2d, ViTSimpleFeaturePyramid
from .plain_detr import PlainDETR  # noqa: F401  (registers dino_mm.PlainDETR)

__all__ = ['ViTSimpleFeaturePyramid', 'LayerNorm2d', 'CheckedCocoDataset']
