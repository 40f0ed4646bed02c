"""Flip test-time augmentation for depth estimators (``tools/test.py --tta``).

The official DINOv3 depth evaluation (``use_tta``, on by default for NYU) runs the depther
on the image and on its horizontal mirror, mirrors the second depth map back and averages
the two maps. The average is taken of the *depth maps* (metres), not of bin logits or bin
probabilities. :class:`DepthTTAModel` does the same in MMEngine's TTA scheme:

* the ``tta_pipeline`` of the depth dataset configs loads the image and the depth map once
  and lets mmcv's ``TestTimeAug`` make two views, ``RandomFlip`` with ``prob=0`` and with
  ``prob=1`` (the second also mirrors ``gt_depth_map``), both packed with their ``flip`` /
  ``flip_direction`` meta keys;
* every view goes through the estimator's ordinary ``test_step``; mmseg's
  ``DepthEstimator.postprocess_result`` mirrors the prediction of a flipped view back (it
  reads ``flip`` from the meta information) and resizes it to the original image size;
* :meth:`DepthTTAModel.merge_preds` averages the views' depth maps per image.

The official code averages at the head's output size and resizes the mean to the ground
truth afterwards; here the views are averaged after the bilinear resize to the original
size. Both orders give the same map: bilinear resizing is linear, and with
``align_corners=False`` it commutes with a horizontal flip.
"""
from typing import List

import torch
from mmengine.model import BaseTTAModel
from mmengine.structures import PixelData

from dino_mm.registry import MODELS


def _flip_back(data: torch.Tensor, direction: str) -> torch.Tensor:
    """Undo a ``RandomFlip`` on a (C, H, W) map."""
    if direction == 'horizontal':
        return data.flip(dims=(-1, ))
    if direction == 'vertical':
        return data.flip(dims=(-2, ))
    # mmseg's DepthEstimator flips predictions back only in these two directions.
    raise ValueError(f"DepthTTAModel: flip_direction {direction!r} is not supported; use "
                     "RandomFlip(direction='horizontal' or 'vertical') in tta_pipeline.")


@MODELS.register_module()
class DepthTTAModel(BaseTTAModel):
    """Average the depth maps predicted for the test-time views of each image.

    Used by ``tools/test.py --tta`` with the ``tta_model`` / ``tta_pipeline`` of
    ``configs/_base_/datasets/nyu.py`` and ``kitti.py`` (original + horizontal flip, as the
    official DINOv3 depth evaluation). The merged sample keeps the meta information and the
    ground truth of the unflipped view.

    Args:
        module (dict | nn.Module): The depth estimator, e.g. ``dino_mm.DinoDepthEstimator``
            (``tools/test.py`` sets it to the config's ``model``).
        data_preprocessor (dict | nn.Module, optional): Overrides the estimator's data
            preprocessor. Defaults to None (the estimator's own).
    """

    def merge_preds(self, data_samples_list: List[list]) -> list:
        """Average ``pred_depth_map`` over the views of each image.

        Args:
            data_samples_list (list[list[SegDataSample]]): Per image, the estimator's
                predictions for its views; flipped views are already flipped back by the
                estimator's ``postprocess_result``.

        Returns:
            list[SegDataSample]: One sample per image with the mean ``pred_depth_map``.
        """
        return [self._merge_views(views) for views in data_samples_list]

    @staticmethod
    def _merge_views(views: list):
        name = views[0].metainfo.get('img_path', '<unknown image>')
        for view in views:
            if 'pred_depth_map' not in view:
                raise KeyError(f'DepthTTAModel: a view of {name} has no pred_depth_map; the '
                               'wrapped model must be a depth estimator.')
            if 'flip' not in view.metainfo:
                raise KeyError(
                    f"DepthTTAModel: a view of {name} has no 'flip' meta key, so its "
                    "prediction cannot be flipped back; add 'flip' and 'flip_direction' to "
                    'the meta_keys of PackSegInputs in tta_pipeline.')
        depths = [view.pred_depth_map.data for view in views]
        shapes = {tuple(d.shape) for d in depths}
        if len(shapes) != 1:
            raise ValueError(f'DepthTTAModel: the views of {name} predict depth maps of '
                             f'different sizes {sorted(shapes)}; every view must be resized '
                             'back to the original image size.')
        mean = torch.stack(depths).mean(dim=0)
        merged = next((view for view in views if not view.metainfo['flip']), None)
        if merged is None:
            # Only flipped views: the ground truth was flipped with the image, undo it.
            merged = views[0]
            direction = merged.metainfo.get('flip_direction')
            if 'gt_depth_map' in merged:
                merged.gt_depth_map = PixelData(
                    data=_flip_back(merged.gt_depth_map.data, direction))
            merged.set_metainfo(dict(flip=False, flip_direction=None))
        merged.pred_depth_map = PixelData(data=mean)
        return merged
