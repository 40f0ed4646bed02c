"""Detector hub entry: ``dinov3_vit7b16_de`` (COCO detector on the DINOv3 ViT-7B).

The default is the official detector, :class:`dino_mm.PlainDETR` (Plain-DETR, inference
only), with the official files: the detector head
``dinov3_vit7b16_coco2017_detr_head-b0235ff7.pth`` (its ``model`` entry) and the backbone
``dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth``. ``detector='mmdet_dino'`` builds instead
the trainable mmdet DINO detector of ``configs/detection/dino-4scale_dinov3-vit7b16-*``,
whose file is a dino_mm checkpoint (``dinov3_vit7b16_coco_detector_dino_mm.pth``).

As for every hub entry, the default ``pretrained=None`` loads the files when
:mod:`dino_mm.hub.utils` finds them (nothing is downloaded), and otherwise warns loudly,
naming them, and returns the random init; ``pretrained=True`` makes a missing file a
``FileNotFoundError``; ``pretrained=False`` gives random weights.
"""
import os.path as osp
from typing import Optional

from .backbones import BACKBONE_WEIGHTS
from .utils import WeightsRequest, resolve_entry_weights

__all__ = ['dinov3_vit7b16_de']

#: The official Plain-DETR head file (``dinov3/hub/detectors.py``).
_PLAIN_DETR_FILE = 'dinov3_vit7b16_coco2017_detr_head-b0235ff7.pth'
# Not an official file: a checkpoint of the mmdet DINO detector trained with dino_mm.
_DETECTOR_FILE = 'dinov3_vit7b16_coco_detector_dino_mm.pth'
_CONFIG = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'configs',
                   'detection', 'dino-4scale_dinov3-vit7b16-ft_sfp_8xb2-12e_coco.py')


def dinov3_vit7b16_de(*, pretrained: Optional[bool] = None, weights: Optional[str] = None,
                      backbone_weights: Optional[str] = None, detector: str = 'plain_detr',
                      detector_kwargs: Optional[dict] = None, **kwargs):
    """The DINOv3 ViT-7B/16 COCO detector (see the module docstring).

    Args:
        pretrained (bool, optional): Load the entry's files. None (default): load them if
            they are here, else warn loudly and return random weights. True: a missing file
            raises. False: random weights.
        weights (str, optional): Local detector file; always loaded. ``plain_detr``: the
            official head file (or a whole official detector state dict; ``model`` /
            ``state_dict`` wrappers accepted). ``mmdet_dino``: a dino_mm checkpoint of the
            mmdet DINO config.
        backbone_weights (str, optional): Local official backbone file or tag, loaded
            strictly into the ViT; for ``plain_detr`` part of the default files, for
            ``mmdet_dino`` only loaded when given (it then replaces the file's fine-tuned
            backbone).
        detector (str): ``'plain_detr'`` (official, default) or ``'mmdet_dino'``.
        detector_kwargs (dict, optional): ``plain_detr`` only: :class:`dino_mm.PlainDETR`
            arguments (e.g. ``hidden_dim=64`` for tests).
        **kwargs: Overrides of the ViT config (e.g. ``depth=4`` for tests).

    Returns:
        nn.Module: the detector in eval mode for ``plain_detr`` (its ``predict`` gives
        mmdet ``DetDataSample``s with 80-class COCO labels); the mmdet DINO detector as
        built for ``mmdet_dino``.
    """
    if detector == 'plain_detr':
        return _plain_detr(pretrained, weights, backbone_weights, detector_kwargs, kwargs)
    if detector != 'mmdet_dino':
        raise ValueError(f"dinov3_vit7b16_de: detector must be 'plain_detr' or 'mmdet_dino', "
                         f'got {detector!r}.')
    if detector_kwargs:
        raise ValueError('dinov3_vit7b16_de: detector_kwargs only apply to '
                         "detector='plain_detr'; change the mmdet DINO config instead.")
    return _mmdet_dino(pretrained, weights, backbone_weights, kwargs)


def _plain_detr(pretrained, weights, backbone_weights, detector_kwargs, vit_kwargs):
    from dino_mm.registry import MODELS
    from dino_mm.utils import register_all_modules
    files = BACKBONE_WEIGHTS['dinov3_vit7b16']
    requests = [WeightsRequest('detector', weights, {'COCO2017': _PLAIN_DETR_FILE}, 'COCO2017',
                               explicit=weights is not None),
                WeightsRequest('backbone', backbone_weights, files, 'LVD1689M',
                               explicit=backbone_weights is not None, arg='backbone_weights')]
    paths = resolve_entry_weights('dinov3_vit7b16_de', pretrained, requests)  # fail fast
    register_all_modules(init_default_scope=False)
    import dino_mm.models.detection  # noqa: F401 (registers dino_mm.PlainDETR)
    model = MODELS.build(dict(
        type='dino_mm.PlainDETR',
        backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vit7b16',
                      **vit_kwargs),
        **(detector_kwargs or {})))
    if paths['detector'] is not None:
        model.load_official_files(paths['detector'], paths.get('backbone'))
    elif paths.get('backbone') is not None:
        from dino_mm.models.backbones.utils import load_checkpoint_strict
        load_checkpoint_strict(model.get_submodule(model.vit_prefix[:-1]), paths['backbone'])
    return model.eval()


def _mmdet_dino(pretrained, weights, backbone_weights, kwargs):
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
