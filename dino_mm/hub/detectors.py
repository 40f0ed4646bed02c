"""Detector hub entry: ``dinov3_vit7b16_de`` (COCO detector on the DINOv3 ViT-7B).

The official detector is a Plain-DETR; dino_mm provides the same entry name building the
mmdet DINO detector of ``configs/detection/dino-4scale_dinov3-vit7b16-*``. Official
detector weights therefore do not load into it (different architecture); ``weights``
accepts a checkpoint trained with that config, ``backbone_weights`` the official backbone.

As for every hub entry, the default ``pretrained=None`` loads the detector file
``dinov3_vit7b16_coco_detector_dino_mm.pth`` (the whole detector, its fine-tuned backbone
included) when it is found by :mod:`dino_mm.hub.utils` (nothing is downloaded), and
otherwise warns loudly, naming the file, and returns the random init; ``pretrained=True``
makes a missing file a ``FileNotFoundError``; ``pretrained=False`` gives random weights.
"""
import os.path as osp
from typing import Optional

from .backbones import BACKBONE_WEIGHTS
from .utils import WeightsRequest, resolve_entry_weights

__all__ = ['dinov3_vit7b16_de']

# Not an official file: the official Plain-DETR weights do not fit this mmdet detector.
_DETECTOR_FILE = 'dinov3_vit7b16_coco_detector_dino_mm.pth'
_CONFIG = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'configs',
                   'detection', 'dino-4scale_dinov3-vit7b16-ft_sfp_8xb2-12e_coco.py')


def dinov3_vit7b16_de(*, pretrained: Optional[bool] = None, weights: Optional[str] = None,
                      backbone_weights: Optional[str] = None, **kwargs):
    """mmdet DINO detector on a DINOv3 ViT-7B/16 backbone (see module docstring).

    Args:
        pretrained (bool, optional): Load the detector file (see the module docstring).
            None (default): load it if it is here, else warn loudly and return random
            weights. True: a missing file raises. False: random weights.
        weights (str, optional): Local path of a detector checkpoint trained with the
            dino_mm config (``state_dict`` / ``model`` wrappers accepted); always loaded.
        backbone_weights (str, optional): Local official backbone file or tag, loaded
            strictly into ``model.backbone`` (after the detector file, whose own
            fine-tuned backbone it then replaces); only loaded when given.
        **kwargs: Overrides merged into the backbone config (e.g. ``depth=2`` for tests).
    """
    from mmengine.config import Config

    from dino_mm.registry import MODELS
    from dino_mm.utils import register_all_modules
    if not osp.isfile(_CONFIG):
        raise FileNotFoundError(f'dinov3_vit7b16_de needs the dino_mm config {_CONFIG}; '
                                'use a source checkout of dino_mm (the configs/ folder).')
    requests = [WeightsRequest('detector', weights, {'COCO2017': _DETECTOR_FILE}, 'COCO2017',
                               explicit=weights is not None)]
    if backbone_weights is not None:
        files = BACKBONE_WEIGHTS['dinov3_vit7b16']
        requests.append(WeightsRequest('backbone', backbone_weights, files, 'LVD1689M',
                                       explicit=True, arg='backbone_weights'))
    paths = resolve_entry_weights('dinov3_vit7b16_de', pretrained, requests)  # fail fast
    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(_CONFIG)
    cfg.model.backbone.pop('init_cfg', None)
    cfg.model.backbone.update(kwargs)
    if 'embed_dim' in kwargs:
        cfg.model.neck.in_channels = kwargs['embed_dim']
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    if paths['detector'] is not None:
        from dino_mm.engine.checkpoint import safe_torch_load
        state = safe_torch_load(paths['detector'])
        state = state.get('state_dict', state.get('model', state))
        model.load_state_dict(state, strict=True)
    if paths.get('backbone') is not None:  # asked for explicitly: replaces the file's
        from dino_mm.models.backbones.utils import load_checkpoint_strict
        load_checkpoint_strict(model.backbone, paths['backbone'])
    return model
