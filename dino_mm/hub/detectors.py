"""Detector hub entry: ``dinov3_vit7b16_de`` (COCO detector on the DINOv3 ViT-7B).

The official detector is a Plain-DETR; dino_mm provides the same entry name building the
mmdet DINO detector of ``configs/detection/dino-4scale_dinov3-vit7b16-*``. Official
detector weights therefore do not load into it (different architecture); ``weights``
accepts a checkpoint trained with that config, ``backbone_weights`` the official backbone.
"""
import os.path as osp
from typing import Optional

import torch

from .utils import resolve_weights

__all__ = ['dinov3_vit7b16_de']

_CONFIG = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'configs',
                   'detection', 'dino-4scale_dinov3-vit7b16-ft_sfp_8xb2-12e_coco.py')


def dinov3_vit7b16_de(*, pretrained: bool = False, weights: Optional[str] = None,
                      backbone_weights: Optional[str] = None, **kwargs):
    """mmdet DINO detector on a DINOv3 ViT-7B/16 backbone (see module docstring).

    Args:
        pretrained (bool): Load detector weights (a local file; nothing is downloaded).
        weights (str, optional): Local path of a detector checkpoint trained with the
            dino_mm config (``state_dict`` / ``model`` wrappers accepted).
        backbone_weights (str, optional): Local official backbone file, loaded strictly
            into ``model.backbone`` when the detector weights are not given.
        **kwargs: Overrides merged into the backbone config (e.g. ``depth=2`` for tests).
    """
    from mmengine.config import Config

    from dino_mm.registry import MODELS
    from dino_mm.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    if not osp.isfile(_CONFIG):
        raise FileNotFoundError(f'dinov3_vit7b16_de needs the dino_mm config {_CONFIG}; '
                                'use a source checkout of dino_mm (the configs/ folder).')
    cfg = Config.fromfile(_CONFIG)
    cfg.model.backbone.pop('init_cfg', None)
    cfg.model.backbone.update(kwargs)
    if 'embed_dim' in kwargs:
        cfg.model.neck.in_channels = kwargs['embed_dim']
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    if pretrained or weights is not None:
        path = resolve_weights('dinov3_vit7b16_de', weights, {'COCO2017': 'dinov3_vit7b16_coco_detector_dino_mm.pth'},
                               'COCO2017')
        from dino_mm.engine.checkpoint import safe_torch_load
        state = safe_torch_load(path)
        state = state.get('state_dict', state.get('model', state))
        model.load_state_dict(state, strict=True)
    elif backbone_weights is not None:
        from dino_mm.models.backbones.utils import load_checkpoint_strict
        load_checkpoint_strict(model.backbone, backbone_weights)
    return model
