"""The official DINOv3 COCO detector (Plain-DETR) as an mmdet detector.

:class:`PlainDETR` owns the official submodules at the official attribute paths, so its
``state_dict()`` keys and shapes are exactly those of the official ``PlainDETRReParam``
(``backbone.0._backbone.backbone.*`` for the ViT, ``transformer.*``, ``class_embed.*``,
``bbox_embed.*``, ``query_embed.weight``, ``input_proj.0.*``); the data preprocessor
holds no persistent state. Released weights load with ``load_state_dict(strict=True)``
(see :meth:`PlainDETR.load_official_state_dict` for a head-only file plus a backbone).
"""
import copy
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmdet.models.detectors.base import BaseDetector
from mmdet.models.layers import MLP
from mmengine.structures import InstanceData

from dino_mm.registry import MODELS
from .backbone import BackboneWithPositionEncoding, ViTMultiLayerFeatures, WindowedFeatures
from .box_ops import delta_to_cxcywh
from .criterion import PlainDETRCriterion
from .postprocess import PlainDETRPostProcess
from .transformer import PlainDETRTransformer

__all__ = ['PlainDETR', 'COCO_CATEGORY_IDS']

#: The 80 COCO category ids in mmdet ``CocoDataset`` order: label ``i`` <-> id ``[i]``.
COCO_CATEGORY_IDS: Tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77,
    78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90)

_DEFAULT_PREPROCESSOR = dict(
    type='mmdet.DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=16)


@MODELS.register_module()
class PlainDETR(BaseDetector):
    """DINOv3 Plain-DETR COCO detector (official ``dinov3_vit7b16_de``).

    The frozen DINOv3 ViT gives the concatenated maps of 4 blocks, for ``n x n`` windows
    and for a resized whole image (:class:`WindowedFeatures`); a 1x1 conv + GroupNorm
    projects them to ``hidden_dim``; a 6-layer encoder, two-stage proposals on 4
    strides, and a 6-layer decoder with box relative-position-biased global cross
    attention predict ``num_classes`` sigmoid logits and absolute-pixel boxes for
    ``num_queries_one2one`` queries. The ``num_queries_one2many`` hybrid-matching
    queries only serve training: their embeddings are kept (they are in the released
    state dict) but, as in the official inference, only the first
    ``num_queries_one2one`` are used.

    Labels: the released head has 91 outputs indexed by COCO *category id* (index 0
    and the 10 ids absent from COCO 2017 are never annotated). :meth:`predict` maps a
    prediction of id ``category_ids[i]`` to mmdet label ``i`` (mmdet's ``CocoDataset``
    label ``i`` is category ``cat_ids[i]``, the sorted 80 ids) and drops predictions of
    the 11 other ids, after the official top-k.

    Args:
        backbone (dict | nn.Module): The ViT, a :class:`DinoVisionTransformer` config
            (default ``arch='dinov3_vit7b16'``; sizes may be overridden, e.g.
            ``embed_dim=64, depth=4, num_heads=4``) or module.
        hidden_dim (int): Transformer width. Defaults to 768.
        nheads (int): Transformer heads. Defaults to 8.
        dim_feedforward (int): Decoder FFN width. Defaults to 2048.
        encoder_dim_feedforward (int): Encoder FFN width; 2048 in the official model
            whatever ``dim_feedforward`` is. Defaults to 2048.
        num_encoder_layers (int): Defaults to 6.
        num_decoder_layers (int): Defaults to 6.
        num_classes (int): Logits per query. Defaults to 91 (COCO category ids).
        num_queries_one2one (int): Inference queries. Defaults to 1500.
        num_queries_one2many (int): Training-only queries. Defaults to 1500.
        topk (int): Detections per image. Defaults to 1500.
        layers_to_use (Sequence[int], optional): ViT blocks; default the last block of
            each quarter ([9, 19, 29, 39] for ViT-7B).
        n_windows_sqrt (int): Windows per side; 0 disables windowing. Defaults to 3
            (2 for the official ViT-L+ variant). Padded inputs must leave the last
            window a patch, e.g. at least 80 pixels per side for 3 windows of patch 16.
        rpe_hidden_dim (int): Box-bias MLP width. Defaults to 512.
        proposal_min_size (float): First proposal level box side. Defaults to 50.
        category_ids (Sequence[int], optional): Category id of each mmdet label.
            Defaults to the COCO ids when ``num_classes == 91``; None otherwise
            (labels are the logit indices).
        criterion (dict, optional): Training loss, a :class:`PlainDETRCriterion`
            config (defaults: the official weights, ``k_one2many=6``).
        data_preprocessor (dict | nn.Module, optional): Defaults to a
            ``DetDataPreprocessor`` with ImageNet mean/std, BGR->RGB and padding to
            multiples of 16 (the patch size; the windows need it).
        init_cfg (dict, optional): MMEngine init config.
    """

    def __init__(self, backbone: Union[dict, nn.Module, None] = None, hidden_dim: int = 768,
                 nheads: int = 8, dim_feedforward: int = 2048, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, num_classes: int = 91,
                 num_queries_one2one: int = 1500, num_queries_one2many: int = 1500,
                 topk: int = 1500, layers_to_use: Optional[Sequence[int]] = None,
                 n_windows_sqrt: int = 3, rpe_hidden_dim: int = 512,
                 proposal_min_size: float = 50.0, encoder_dim_feedforward: int = 2048,
                 category_ids: Optional[Sequence[int]] = COCO_CATEGORY_IDS,
                 criterion: Optional[dict] = None,
                 data_preprocessor: Union[dict, nn.Module, None] = None,
                 init_cfg: Optional[dict] = None) -> None:
        if data_preprocessor is None:
            data_preprocessor = copy.deepcopy(_DEFAULT_PREPROCESSOR)
        if isinstance(data_preprocessor, dict):
            data_preprocessor = MODELS.build(data_preprocessor)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if backbone is None:
            backbone = dict(type='DinoVisionTransformer', arch='dinov3_vit7b16')
        vit = MODELS.build(backbone) if isinstance(backbone, dict) else backbone
        vit.requires_grad_(False)  # the released detector keeps the ViT frozen
        patch = vit.patch_size
        features = ViTMultiLayerFeatures(vit, layers_to_use)
        if n_windows_sqrt > 0:
            features = WindowedFeatures(features, n_windows_sqrt)
        self.backbone = BackboneWithPositionEncoding(features, hidden_dim)
        self.vit_prefix = ('backbone.0._backbone.backbone.' if n_windows_sqrt > 0 else
                           'backbone.0.backbone.')

        self.transformer = PlainDETRTransformer(
            d_model=hidden_dim, nhead=nheads, dim_feedforward=dim_feedforward,
            num_encoder_layers=num_encoder_layers, num_decoder_layers=num_decoder_layers,
            rpe_hidden_dim=rpe_hidden_dim, feature_stride=patch,
            proposal_tgt_strides=[int(m * patch) for m in (0.5, 1, 2, 4)],
            proposal_min_size=proposal_min_size,
            encoder_dim_feedforward=encoder_dim_feedforward)
        # One head per decoder layer plus one for the two-stage proposals (the last).
        num_heads = num_decoder_layers + 1
        self.class_embed = nn.ModuleList(nn.Linear(hidden_dim, num_classes)
                                         for _ in range(num_heads))
        self.bbox_embed = nn.ModuleList(MLP(hidden_dim, hidden_dim, 4, 3)
                                        for _ in range(num_heads))
        self.transformer.decoder.share_heads(self.class_embed, self.bbox_embed)
        self.query_embed = nn.Embedding(num_queries_one2one + num_queries_one2many,
                                        hidden_dim)
        self.input_proj = nn.ModuleList([nn.Sequential(
            nn.Conv2d(self.backbone.num_channels, hidden_dim, kernel_size=1),
            nn.GroupNorm(32, hidden_dim))])
        self.num_classes = num_classes
        self.num_queries_one2one = num_queries_one2one
        self.num_queries_one2many = num_queries_one2many
        self.postprocess = PlainDETRPostProcess(topk)
        if category_ids is not None and num_classes == 91:
            table = torch.full((num_classes,), -1, dtype=torch.long)
            table[torch.as_tensor(list(category_ids))] = torch.arange(len(category_ids))
            inverse = torch.as_tensor(list(category_ids), dtype=torch.long)
        else:
            table = inverse = None
        self.register_buffer('category_to_label', table, persistent=False)
        self.register_buffer('label_to_category', inverse, persistent=False)
        self.criterion = MODELS.build(dict(type=PlainDETRCriterion, **(criterion or {})))
        self._init_heads()

    def _init_heads(self) -> None:
        """Official head init: focal prior on the logits, zero last box layer."""
        prior = -math.log((1 - 0.01) / 0.01)
        for cls, box in zip(self.class_embed, self.bbox_embed):
            nn.init.constant_(cls.bias, prior)
            nn.init.zeros_(box.layers[-1].weight)
            nn.init.zeros_(box.layers[-1].bias)
        nn.init.xavier_uniform_(self.input_proj[0][0].weight)
        nn.init.zeros_(self.input_proj[0][0].bias)

    # ------------------------------------------------------------------ weights
    def load_official_state_dict(self, state: Dict[str, torch.Tensor],
                                 backbone_state: Optional[Dict[str, torch.Tensor]] = None,
                                 strict: bool = True):
        """Load an official detector state dict (optionally head-only + a ViT file).

        The released ``*_detr_head-*.pth`` (``['model']``) may hold only the head; the
        official ViT weights (``backbone_state``, official DINOv3 backbone keys) are
        then placed under :attr:`vit_prefix`. The heads shared with the decoder load
        from their ``class_embed.*`` / ``bbox_embed.*`` keys, or from the
        ``transformer.decoder.`` copy when the file has only that one (the decoder
        itself drops that copy on load, see :class:`GlobalDecoder`).

        Raises:
            RuntimeError: (``strict``) missing / unexpected keys or shape mismatches,
                each key named (PyTorch's message).
        """
        state = dict(state.get('model', state))
        if backbone_state is not None:
            state.update({self.vit_prefix + k: v for k, v in backbone_state.items()})
        alias = 'transformer.decoder.'
        for key in list(state):
            if key.startswith((alias + 'class_embed.', alias + 'bbox_embed.')):
                state.setdefault(key[len(alias):], state[key])
        return self.load_state_dict(state, strict=strict)

    def load_official_files(self, head_path: str, backbone_path: Optional[str] = None,
                            vit_loaded: bool = False) -> None:
        """Load the released head file (``model`` / ``state_dict`` wrappers accepted, with
        or without the ViT), then the official backbone file strictly into the ViT.

        Nothing may stay at its random init: a key of the head outside the ViT that the
        file lacks (or a key it has that the model lacks) raises, naming them; so does a
        head file without ViT weights when no backbone file is given and the ViT was not
        loaded already (``vit_loaded``: from its own ``init_cfg``).
        """
        from dino_mm.engine.checkpoint import safe_torch_load
        from dino_mm.models.backbones.utils import load_checkpoint_strict
        state = safe_torch_load(head_path)
        state = state.get('model', state.get('state_dict', state))
        if vit_loaded and not any(k.startswith(self.vit_prefix) for k in state):
            state = dict(state, **{self.vit_prefix + k: v for k, v in
                                   self.get_submodule(self.vit_prefix[:-1])
                                   .state_dict().items()})
        result = self.load_official_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(self.vit_prefix)]
        vit_missing = len(result.missing_keys) - len(missing)
        if missing or result.unexpected_keys:
            raise RuntimeError(
                f'{head_path!r} does not fit dino_mm.PlainDETR (missing {missing[:6]}, '
                f'unexpected {result.unexpected_keys[:6]}). Check the detector arguments '
                '(hidden_dim, layers, queries, n_windows_sqrt) and the ViT against the file.')
        if backbone_path is not None:
            load_checkpoint_strict(self.get_submodule(self.vit_prefix[:-1]), backbone_path)
        elif vit_missing:
            raise RuntimeError(
                f'{head_path!r} holds no ViT weights ({vit_missing} keys under '
                f'{self.vit_prefix!r}); give the official backbone file too (hub: '
                "backbone_weights=; config: the ViT's init_cfg).")

    def init_weights(self) -> None:
        """``init_cfg=dict(type='Pretrained', checkpoint=<official head file>)``: the ViT
        first (its own ``init_cfg``, e.g. the official backbone file), then the head file
        through :meth:`load_official_files`; an official file name is looked up like the
        hub does. Otherwise the ViT's own init and the official head init."""
        import os
        vit = self.get_submodule(self.vit_prefix[:-1])
        vit_pretrained = (isinstance(vit.init_cfg, dict)
                          and vit.init_cfg.get('type') == 'Pretrained')
        vit.init_weights()
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            path = os.path.expanduser(str(cfg.get('checkpoint', '')))
            if not os.path.exists(path):
                from dino_mm.hub.utils import find_weights
                found = find_weights(os.path.basename(path))
                if found is None:
                    raise FileNotFoundError(
                        f'dino_mm.PlainDETR init_cfg: detector file {path!r} not found here '
                        'nor in the weights folders ($DINO_MM_WEIGHTS, ~/.cache/dino_mm/'
                        'weights); put the official head file there.')
                path = found
            self.load_official_files(path, vit_loaded=vit_pretrained)
        else:
            self._init_heads()
        self._is_init = True

    # ------------------------------------------------------------------ official forward
    @staticmethod
    def padding_mask(batch_inputs: torch.Tensor, batch_data_samples: Optional[list]
                     ) -> torch.Tensor:
        """(B, H, W) bool mask, True outside each sample's ``img_shape``."""
        b, _, h, w = batch_inputs.shape
        mask = torch.ones((b, h, w), dtype=torch.bool, device=batch_inputs.device)
        for i in range(b):
            ih, iw = (batch_data_samples[i].metainfo['img_shape'][:2]
                      if batch_data_samples is not None else (h, w))
            mask[i, :ih, :iw] = False
        return mask

    def forward_official(self, images: torch.Tensor, mask: torch.Tensor,
                         hybrid: bool = False) -> Dict[str, object]:
        """Official forward: inference (one-to-one queries) or, ``hybrid``, training.

        Args:
            images (Tensor): (B, 3, H, W) normalised, zero-padded, H and W patch
                multiples.
            mask (Tensor): (B, H, W) bool, True on padding.
            hybrid (bool): Also run the one-to-many queries, as the official training
                does: ``num_queries_one2one + num_queries_one2many`` proposals are
                selected and the decoder self attention is masked between the groups.

        Returns:
            dict: ``pred_logits`` (B, Q, K), ``pred_boxes`` (B, Q, 4) absolute cxcywh
            pixels, ``pred_boxes_old`` (reference boxes of the last layer),
            ``pred_deltas``, ``aux_outputs`` (the earlier layers, same keys) and
            ``enc_outputs`` (two-stage proposals) of the one-to-one queries; with
            ``hybrid`` and one-to-many queries, ``one2many`` holds theirs (no
            ``enc_outputs``).
        """
        feats, feat_mask, pos = self.backbone(images, mask)
        src = self.input_proj[0](feats)
        n1 = self.num_queries_one2one
        nq = n1 + (self.num_queries_one2many if hybrid else 0)
        attn_mask = None
        if nq > n1:
            attn_mask = torch.zeros((nq, nq), dtype=torch.bool, device=src.device)
            attn_mask[n1:, :n1] = True
            attn_mask[:n1, n1:] = True
        out = self.transformer(src, feat_mask, pos, self.query_embed.weight[:nq], nq,
                               attn_mask)
        levels = []
        for lvl in range(out['hs'].shape[0]):
            ref = out['init_reference'] if lvl == 0 else out['inter_references'][lvl - 1]
            delta = self.bbox_embed[lvl](out['hs'][lvl])
            levels.append(dict(pred_logits=self.class_embed[lvl](out['hs'][lvl]),
                               pred_boxes=delta_to_cxcywh(ref, delta, out['max_shape']),
                               pred_boxes_old=ref, pred_deltas=delta))

        def queries(level: dict, part: slice) -> dict:
            return {key: value[:, part] for key, value in level.items()}

        one = slice(0, n1)
        result: Dict[str, object] = queries(levels[-1], one)
        result['aux_outputs'] = [queries(level, one) for level in levels[:-1]]
        if nq > n1:
            many = slice(n1, nq)
            result['one2many'] = dict(queries(levels[-1], many),
                                      aux_outputs=[queries(lv, many) for lv in levels[:-1]])
        result['enc_outputs'] = dict(pred_logits=out['enc_outputs_class'],
                                     pred_boxes=out['enc_outputs_coord'],
                                     pred_boxes_old=out['output_proposals'],
                                     pred_deltas=out['enc_outputs_delta'])
        return result

    # ------------------------------------------------------------------ mmdet API
    def extract_feat(self, batch_inputs: torch.Tensor) -> Tuple[torch.Tensor]:
        """Projected (B, hidden_dim, H/p, W/p) features of unpadded inputs."""
        mask = self.padding_mask(batch_inputs, None)
        return (self.input_proj[0](self.backbone(batch_inputs, mask)[0]), )

    def _forward(self, batch_inputs: torch.Tensor, batch_data_samples: Optional[list] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(pred_logits, pred_boxes)`` (mmdet's ``mode='tensor'``)."""
        out = self.forward_official(batch_inputs,
                                    self.padding_mask(batch_inputs, batch_data_samples))
        return out['pred_logits'], out['pred_boxes']

    def train(self, mode: bool = True) -> 'PlainDETR':
        """Train the detector head; the frozen ViT stays in eval mode."""
        super().train(mode)
        self.get_submodule(self.vit_prefix[:-1]).eval()
        return self

    def loss(self, batch_inputs: torch.Tensor, batch_data_samples: list
             ) -> Dict[str, torch.Tensor]:
        """Hybrid-matching losses (:class:`PlainDETRCriterion`) of a training batch.

        Ground truth: each sample's ``gt_instances`` (xyxy boxes in network-input
        pixels, mmdet labels); with the 91-way COCO head, label ``i`` is trained as
        logit ``category_ids[i]``, the inverse of :meth:`predict`'s mapping.
        """
        from mmdet.structures.bbox import get_box_tensor
        out = self.forward_official(batch_inputs,
                                    self.padding_mask(batch_inputs, batch_data_samples),
                                    hybrid=True)
        targets = []
        for sample in batch_data_samples:
            gt = sample.gt_instances
            labels = gt.labels.long()
            table = self.label_to_category
            limit = self.num_classes if table is None else len(table)
            if labels.numel() and int(labels.max()) >= limit:
                raise ValueError(
                    f'dino_mm.PlainDETR: ground-truth label {int(labels.max())} of '
                    f'{sample.metainfo.get("img_path", "an image")} has no logit ({limit} '
                    f'{"num_classes" if table is None else "category_ids"}); set '
                    'category_ids (or num_classes) to match the dataset classes.')
            if table is not None:
                labels = table[labels]
            targets.append(InstanceData(bboxes=get_box_tensor(gt.bboxes).float(),
                                        labels=labels))
        return self.criterion(out, targets, [s.metainfo for s in batch_data_samples])

    @torch.no_grad()
    def predict(self, batch_inputs: torch.Tensor, batch_data_samples: list,
                rescale: bool = True) -> list:
        """Detect; ``pred_instances`` (bboxes xyxy, scores, labels) per data sample.

        Boxes are clipped to ``img_shape`` and, with ``rescale``, scaled to
        ``ori_shape`` pixels. Labels are mmdet's 80 COCO labels (see the class
        docstring); predictions of unused category ids are dropped.
        """
        out = self.forward_official(batch_inputs,
                                    self.padding_mask(batch_inputs, batch_data_samples))
        sizes = torch.tensor([s.metainfo['img_shape'][:2] for s in batch_data_samples],
                             device=batch_inputs.device)
        originals = (torch.tensor([s.metainfo['ori_shape'][:2] for s in batch_data_samples],
                                  device=batch_inputs.device) if rescale else sizes)
        results = self.postprocess(out, sizes, originals)
        for sample, res in zip(batch_data_samples, results):
            labels = res['labels']
            keep = torch.ones_like(labels, dtype=torch.bool)
            if self.category_to_label is not None:
                labels = self.category_to_label[labels]
                keep = labels >= 0
            inst = InstanceData()
            inst.bboxes = res['boxes'][keep]
            inst.scores = res['scores'][keep]
            inst.labels = labels[keep]
            sample.pred_instances = inst
        return batch_data_samples
