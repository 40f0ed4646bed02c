"""ViT-Adapter on a DINO ViT, producing a 4-level pyramid for Mask2Former.

Two forms, sharing the spatial prior module, extractors and output stage:

* :class:`DinoViTAdapter` -- the DINOv3 segmentor's form, described below (no injectors);
* :class:`ViTAdapter` -- the original ViT-Adapter with *injectors*, as in the DINOv2 ViT-g
  Mask2Former segmentor (``dinov2/eval/segmentation_m2f``), described in its docstring.

The adapter (Chen et al., "Vision Transformer Adapter for Dense Predictions", 2022)
has a convolutional *spatial prior module* that produces stride 4/8/16/32 features,
and *extractors*: multi-scale deformable cross-attention from the pyramid tokens
(queries) to the ViT patch tokens (values), followed by a convolutional FFN.

This implementation follows the frozen-backbone form of the DINOv3 7B segmentor
(``dinov3/eval/segmentation/models/backbone/dinov3_adapter.py``): the ViT runs once (no
gradients) and its outputs at ``interaction_indexes`` feed one extractor each; the original
adapter's *injectors* (which write back into the ViT stream) are not used; the last
interaction has two extra extractors; level embeddings, a transposed-conv stride-4 level and
one SyncBN per level. Module names and nesting are the official ones, so an official
adapter state dict loads strictly (``spm.stem.{0,1,3,4,6,7}``, ``spm.conv{2,3,4}.{0,1}``,
``interactions.{i}.extractor.*``, ``interactions.{last}.extra_extractors.{0,1}.*``,
``ffn.dwconv.dwconv``, ``norm1..norm4``, ``level_embed``, ``up``); the level embeddings
start from a unit normal as there. The official code reads the class token and never uses
it; here it is not read. Deformable attention
comes from ``mmcv.ops.MultiScaleDeformableAttention``; on CPU it runs mmcv's pure PyTorch
``multi_scale_deformable_attn_pytorch`` (grid_sample) path, on CUDA the compiled op.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmcv.ops import MultiScaleDeformableAttention
from mmengine.model import BaseModule
from mmengine.model.weight_init import constant_init, normal_init, trunc_normal_init
from timm.layers import DropPath
from torch import Tensor
from torchvision.ops import roi_align

from dino_mm.registry import MODELS
from .center_padding import center_pad, center_pad_amounts

Shapes = List[Tuple[int, int]]


def _reference_points(shapes: Shapes, device: torch.device) -> Tensor:
    """Normalised (x, y) centres of every token of every level, shape (N, 2)."""
    points = []
    for h, w in shapes:
        ys, xs = torch.meshgrid(
            (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h,
            (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w,
            indexing='ij')
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1))
    return torch.cat(points, dim=0)


def _level_index(shapes: Shapes, device: torch.device) -> Tuple[Tensor, Tensor]:
    spatial = torch.as_tensor(shapes, dtype=torch.long, device=device)
    areas = spatial[:, 0] * spatial[:, 1]
    start = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    return spatial, start


def _init_adapter_module(m: nn.Module) -> None:
    """The official adapter init: truncated-normal linears, unit norms, He-normal convs
    (fan-out)."""
    if isinstance(m, nn.Linear):
        trunc_normal_init(m, std=0.02, bias=0)
    elif isinstance(m, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm)):
        constant_init(m, 1, bias=0)
    elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        normal_init(m, 0.0, (2.0 / fan_out)**0.5, bias=0)


class SpatialPriorModule(nn.Module):
    """Conv stem giving stride-4 features and stride-8/16/32 tokens, all ``embed_dim``.

    Args:
        inplanes (int): Width of the stem (doubled at stride 8, quadrupled after).
        embed_dim (int): Output channels (the ViT width).
        norm_cfg (dict): Norm layer config of the convolutions.
    """

    def __init__(self, inplanes: int, embed_dim: int, norm_cfg: dict) -> None:
        super().__init__()

        def conv(cin: int, cout: int, stride: int) -> List[nn.Module]:
            # conv, norm, ReLU as three entries: the official Sequential indices
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                    build_norm_layer(norm_cfg, cout)[1], nn.ReLU(inplace=True)]

        self.stem = nn.Sequential(
            *conv(3, inplanes, 2), *conv(inplanes, inplanes, 1), *conv(inplanes, inplanes, 1),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.conv2 = nn.Sequential(*conv(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*conv(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*conv(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, embed_dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dim, 1)

    def forward(self, x: Tensor) -> List[Tensor]:
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return [self.fc1(c1), self.fc2(c2), self.fc3(c3), self.fc4(c4)]


class DWConv(nn.Module):
    """The depthwise 3x3 conv of :class:`ConvFFN` (its own module: the official key is
    ``ffn.dwconv.dwconv.weight``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.dwconv(x)


class ConvFFN(nn.Module):
    """Token FFN with a depthwise 3x3 conv applied to each pyramid level's map.

    Args:
        dim (int): Token width.
        hidden_dim (int): Hidden width.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor, shapes: Shapes) -> Tensor:
        x = self.fc1(x)
        b, _, c = x.shape
        parts, start = [], 0
        for h, w in shapes:
            part = x[:, start:start + h * w].transpose(1, 2).reshape(b, c, h, w)
            parts.append(self.dwconv(part).flatten(2).transpose(1, 2))
            start += h * w
        return self.fc2(self.act(torch.cat(parts, dim=1)))


class _NormedDeformableAttention(nn.Module):
    """``query_norm`` / ``feat_norm`` + mmcv deformable attention over ``num_levels`` maps:
    the part the extractor and the injector share (official key names)."""

    def __init__(self, dim: int, num_heads: int, n_points: int, deform_ratio: float,
                 num_levels: int) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleDeformableAttention(
            embed_dims=dim, num_heads=num_heads, num_levels=num_levels, num_points=n_points,
            dropout=0.0, batch_first=True, value_proj_ratio=deform_ratio)

    def _attend(self, query: Tensor, reference_points: Tensor, feat: Tensor,
                feat_shapes: Shapes, identity: Tensor) -> Tensor:
        """``identity + attn(query_norm(query) -> feat_norm(feat))``."""
        spatial, start = _level_index(feat_shapes, query.device)
        return self.attn(
            query=self.query_norm(query), value=self.feat_norm(feat), identity=identity,
            reference_points=reference_points, spatial_shapes=spatial,
            level_start_index=start)


class Extractor(_NormedDeformableAttention):
    """Deformable cross-attention from pyramid tokens to ViT tokens, then ConvFFN.

    Args:
        dim (int): Token width.
        num_heads (int): Deformable attention heads.
        n_points (int): Sampling points per head.
        deform_ratio (float): ``value_proj_ratio`` of the deformable attention.
        with_cffn (bool): Whether to add the ConvFFN.
        cffn_ratio (float): Hidden width ratio of the ConvFFN.
        drop_path (float): Stochastic depth rate of the ConvFFN branch.
    """

    def __init__(self, dim: int, num_heads: int, n_points: int, deform_ratio: float,
                 with_cffn: bool, cffn_ratio: float, drop_path: float) -> None:
        super().__init__(dim, num_heads, n_points, deform_ratio, num_levels=1)
        self.ffn = ConvFFN(dim, int(dim * cffn_ratio)) if with_cffn else None
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-6) if with_cffn else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, query: Tensor, reference_points: Tensor, feat: Tensor,
                feat_shape: Tuple[int, int], query_shapes: Shapes) -> Tensor:
        query = self._attend(query, reference_points, feat, [feat_shape], identity=query)
        if self.ffn is not None:
            query = query + self.drop_path(self.ffn(self.ffn_norm(query), query_shapes))
        return query


class Injector(_NormedDeformableAttention):
    """Deformable cross-attention from the ViT tokens (queries) to the pyramid tokens,
    written back into the ViT stream through a per-channel gate ``gamma``.

    Args:
        dim (int): Token width.
        num_heads (int): Deformable attention heads.
        n_points (int): Sampling points per head and level.
        deform_ratio (float): ``value_proj_ratio`` of the deformable attention.
        init_values (float): Initial value of ``gamma`` (0: the ViT starts unmodulated).
    """

    def __init__(self, dim: int, num_heads: int, n_points: int, deform_ratio: float,
                 init_values: float) -> None:
        super().__init__(dim, num_heads, n_points, deform_ratio, num_levels=3)
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, query: Tensor, reference_points: Tensor, feat: Tensor,
                feat_shapes: Shapes) -> Tensor:
        # identity=0: mmcv's attention adds its identity; the gate needs the bare output.
        attn = self._attend(query, reference_points, feat, feat_shapes,
                            identity=torch.zeros_like(query))
        return query + self.gamma * attn


class InteractionBlock(nn.Module):
    """One interaction: an extractor from one ViT output, plus (for the last interaction)
    two extra extractors on the same output (official ``InteractionBlockWithCls``).
    :class:`ViTAdapter` adds an ``injector`` (official key ``interactions.{i}.injector``)."""

    def __init__(self, make_extractor, extra: bool, make_injector=None) -> None:
        super().__init__()
        if make_injector is not None:
            self.injector = make_injector()
        self.extractor = make_extractor()
        self.extra_extractors = (nn.Sequential(make_extractor(), make_extractor())
                                 if extra else None)

    def forward(self, query: Tensor, reference_points: Tensor, feat: Tensor,
                feat_shape: Tuple[int, int], query_shapes: Shapes) -> Tensor:
        query = self.extractor(query, reference_points, feat, feat_shape, query_shapes)
        for extractor in (self.extra_extractors or ()):
            query = extractor(query, reference_points, feat, feat_shape, query_shapes)
        return query


@MODELS.register_module()
class DinoViTAdapter(BaseModule):
    """Frozen DINO ViT + adapter returning (stride 4, 8, 16, 32) feature maps.

    Args:
        backbone (dict): Config of the ViT, e.g.
            ``dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vit7b16')``.
            It must provide ``get_intermediate_layers`` and ``embed_dim``.
        interaction_indexes (Sequence[int]): Block indices whose (normalised) patch
            tokens feed the extractors, e.g. ``[9, 19, 29, 39]`` for the 7B.
        conv_inplane (int): Stem width of the spatial prior module. Defaults to 64.
        deform_num_heads (int): Heads of the deformable attention. Defaults to 16.
        n_points (int): Sampling points per head. Defaults to 4.
        deform_ratio (float): Value projection ratio. Defaults to 0.5.
        with_cffn (bool): Use the ConvFFN in extractors. Defaults to True.
        cffn_ratio (float): ConvFFN hidden ratio. Defaults to 0.25.
        drop_path_rate (float): Stochastic depth of the ConvFFN branch. Defaults to 0.
        use_extra_extractor (bool): Two more extractors on the last ViT output.
            Defaults to True.
        add_vit_feature (bool): Add the resized ViT maps to the pyramid. Defaults to True.
        backbone_norm (bool): Apply the ViT's final norm to its outputs. Defaults to True.
        freeze_backbone (bool): Keep the ViT frozen, in eval mode and without autograd.
            Defaults to True.
        norm_cfg (dict): Norm of the convolutions and output norms.
            Defaults to ``dict(type='SyncBN', requires_grad=True)``.
        init_cfg (dict, optional): mmengine init config. Defaults to None.
    """

    def __init__(self,
                 backbone: dict,
                 interaction_indexes: Sequence[int],
                 conv_inplane: int = 64,
                 deform_num_heads: int = 16,
                 n_points: int = 4,
                 deform_ratio: float = 0.5,
                 with_cffn: bool = True,
                 cffn_ratio: float = 0.25,
                 drop_path_rate: float = 0.0,
                 use_extra_extractor: bool = True,
                 add_vit_feature: bool = True,
                 backbone_norm: bool = True,
                 freeze_backbone: bool = True,
                 norm_cfg: dict = dict(type='SyncBN', requires_grad=True),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        dim = getattr(self.backbone, 'embed_dim', None)
        if dim is None or not hasattr(self.backbone, 'get_intermediate_layers'):
            raise TypeError(
                f'DinoViTAdapter needs a ViT with `embed_dim` and '
                f'`get_intermediate_layers`; {type(self.backbone).__name__} (from '
                f"backbone type={backbone.get('type')!r}) lacks them.")
        if len(interaction_indexes) == 0:
            raise ValueError('interaction_indexes must name at least one ViT block')
        self.interaction_indexes = [int(i) for i in interaction_indexes]
        self.embed_dim = dim
        # Not named `patch_size`: the segmentor must not pad the whole image, since the
        # convolutional branch and Mask2Former work at any size (see _vit_features).
        self.vit_patch_size = int(getattr(self.backbone, 'patch_size', 1))
        self.add_vit_feature = add_vit_feature
        self.backbone_norm = backbone_norm
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = SpatialPriorModule(conv_inplane, dim, norm_cfg)
        def make_extractor() -> Extractor:
            return Extractor(dim, deform_num_heads, n_points, deform_ratio, with_cffn,
                             cffn_ratio, drop_path_rate)

        last = len(self.interaction_indexes) - 1
        make_injector = self._injector_factory(dim, deform_num_heads, n_points, deform_ratio)
        self.interactions = nn.Sequential(*[
            InteractionBlock(make_extractor, extra=use_extra_extractor and i == last,
                             make_injector=make_injector)
            for i in range(len(self.interaction_indexes))
        ])
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        for i in range(1, 5):  # official norm1..norm4, one per output level
            self.add_module(f'norm{i}', build_norm_layer(norm_cfg, dim)[1])

    def _injector_factory(self, dim: int, num_heads: int, n_points: int,
                          deform_ratio: float):
        """None: the DINOv3 form has no injectors (:class:`ViTAdapter` overrides)."""
        return None

    def init_weights(self) -> None:
        # The ViT keeps its own (pretrained or official) init; only the adapter
        # parts are initialised here.
        super().init_weights()
        for part in (self.spm, self.interactions, self.up):
            part.apply(_init_adapter_module)
        for module in self.interactions.modules():  # after the Linear init, as official
            if isinstance(module, MultiScaleDeformableAttention):
                module.init_weights()
        nn.init.normal_(self.level_embed)  # unit normal, as the official adapter

    def train(self, mode: bool = True) -> 'DinoViTAdapter':
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def _vit_features(self, x: Tensor) -> List[Tensor]:
        """ViT patch maps covering exactly the (possibly unpadded) image ``x``.

        The ViT needs a multiple of its patch size, so ``x`` is center-padded for it;
        the padded border is then cut out of each map with ``roi_align`` so that the
        features stay aligned with the pyramid and with the Mask2Former masks, which
        are computed on the unpadded image.
        """
        p = self.vit_patch_size
        h, w = x.shape[2:]
        padded = center_pad(x, p) if p > 1 else x

        def run() -> List[Tensor]:
            return list(self.backbone.get_intermediate_layers(
                padded, n=self.interaction_indexes, reshape=True, norm=self.backbone_norm))

        if self.freeze_backbone:
            with torch.no_grad():
                maps = run()
        else:
            maps = run()
        if padded is x:
            return maps
        top, left = center_pad_amounts(h, p)[0], center_pad_amounts(w, p)[0]
        box = torch.tensor([[left / p, top / p, (left + w) / p, (top + h) / p]],
                           dtype=maps[0].dtype, device=x.device)
        boxes = [box] * x.shape[0]
        size = (max(1, round(h / p)), max(1, round(w / p)))
        return [roi_align(m, boxes, size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
                for m in maps]

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return pyramid maps at strides 4, 8, 16, 32 (each ``embed_dim`` channels)."""
        vit_maps = self._vit_features(x)
        c1, c2, c3, c4 = self.spm(x)
        shapes = [tuple(c.shape[2:]) for c in (c2, c3, c4)]
        tokens = [c.flatten(2).transpose(1, 2) + self.level_embed[i]
                  for i, c in enumerate((c2, c3, c4))]
        query = torch.cat(tokens, dim=1)
        ref = _reference_points(shapes, x.device)[None, :, None, :].expand(
            x.shape[0], -1, 1, -1)

        for block, vit in zip(self.interactions, vit_maps):
            query = block(query, ref, vit.flatten(2).transpose(1, 2), tuple(vit.shape[2:]),
                          shapes)

        return self._pyramid(c1, query, shapes, vit_maps)

    def _pyramid(self, c1: Tensor, query: Tensor, shapes: Shapes,
                 vit_maps: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Pyramid tokens back to maps, the stride-4 level, the ViT maps, the norms."""
        b, _, d = query.shape
        outs, start = [], 0
        for h, w in shapes:
            outs.append(query[:, start:start + h * w].transpose(1, 2).reshape(b, d, h, w))
            start += h * w
        c2, c3, c4 = outs
        c1 = c1 + F.interpolate(self.up(c2), size=c1.shape[2:], mode='bilinear',
                                align_corners=False)
        pyramid = [c1, c2, c3, c4]
        if self.add_vit_feature:
            # With fewer than four interaction layers the last ViT map is reused.
            vits = (vit_maps + [vit_maps[-1]] * 4)[:4] if len(vit_maps) < 4 else vit_maps[-4:]
            pyramid = [
                c + F.interpolate(v, size=c.shape[2:], mode='bilinear', align_corners=False)
                for c, v in zip(pyramid, vits)
            ]
        norms = (self.norm1, self.norm2, self.norm3, self.norm4)
        return tuple(norm(c) for norm, c in zip(norms, pyramid))


@MODELS.register_module()
class ViTAdapter(DinoViTAdapter):
    """The original ViT-Adapter (with injectors) on a DINOv2 ViT, as in the official DINOv2
    ViT-g Mask2Former segmentor (``dinov2/eval/segmentation_m2f``, ViT-Adapter of Chen et
    al. 2022).

    The ViT stream is *modulated*: the ViT blocks are split into ``interaction_indexes``
    ranges; before each range an injector adds (through its gate ``gamma``) deformable
    cross-attention from the ViT patch tokens to the pyramid tokens; after it the extractor(s)
    update the pyramid tokens from the ViT patch tokens, whose map is one of the four ViT
    features. So the ViT runs with autograd even when its weights are frozen.

    Official computation kept here: the learned position embedding is resized from its
    stored grid with plain bicubic interpolation (``align_corners=False``, no antialias, no
    offset -- not the DINOv2 backbone's own interpolation); the class token joins the patch
    tokens for the blocks only; the ViT's final norm is never applied; the input is padded
    (bottom / right, zeros) to a multiple of 32 as the official pipeline resizes it to one,
    and the outputs are cropped back to the input's extent.

    The ViT has no mask token and no final norm in the official file; here they are not part
    of the state dict (the mask token becomes a non-persistent buffer, the norm an identity),
    so an official state dict, converted by
    :func:`dino_mm.models.segmentation.official_m2f.convert_dinov2_m2f`, loads strictly.

    Args:
        backbone (dict): A DINOv2 ViT without registers, e.g.
            ``dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vitg14')``.
        interaction_indexes (Sequence[Sequence[int]]): Contiguous ``[first, last]`` block
            ranges, e.g. ``[[0, 9], [10, 19], [20, 29], [30, 39]]`` for ViT-g/14.
        init_values (float): Initial injector gate. Defaults to 0 (official).
        freeze_backbone (bool): Freeze the ViT's weights (gradients still flow through it
            to the injectors). Defaults to True (DINOv2 trains the adapter and head on a
            frozen ViT).
        **kwargs: The other :class:`DinoViTAdapter` arguments (``conv_inplane``,
            ``deform_num_heads``, ``n_points``, ``deform_ratio``, ``with_cffn``,
            ``cffn_ratio``, ``drop_path_rate``, ``use_extra_extractor``,
            ``add_vit_feature``, ``norm_cfg``, ``init_cfg``).
    """

    #: The official pipeline resizes inputs to a multiple of this (``ResizeToMultiple``).
    size_divisor = 32
    #: Official ViT keys this adapter lacks and never uses (see the class docstring).
    UNUSED_VIT_KEYS = ('norm.', 'mask_token')

    def __init__(self, backbone: dict, interaction_indexes: Sequence[Sequence[int]],
                 init_values: float = 0.0, freeze_backbone: bool = True, **kwargs) -> None:
        ranges = [tuple(int(i) for i in r) for r in interaction_indexes]
        if not ranges or any(len(r) != 2 or r[0] > r[1] for r in ranges):
            raise ValueError(
                'ViTAdapter interaction_indexes must be [first, last] block ranges, e.g. '
                f'[[0, 9], [10, 19], [20, 29], [30, 39]]; got {interaction_indexes!r}.')
        for prev, cur in zip(ranges, ranges[1:]):
            if cur[0] != prev[1] + 1:
                raise ValueError(f'ViTAdapter interaction ranges must be contiguous: {prev} '
                                 f'is followed by {cur} in {interaction_indexes!r}.')
        self._init_values = float(init_values)
        super().__init__(backbone, [r[1] for r in ranges], freeze_backbone=freeze_backbone,
                         backbone_norm=False, **kwargs)
        vit = self.backbone
        if getattr(vit, 'version', None) != 'v2' or getattr(vit, 'num_register_tokens', 0):
            raise ValueError(
                'ViTAdapter (the DINOv2 segmentor form) needs a DINOv2 ViT without registers '
                "(arch='dinov2_vit{s,b,l,g}14'); for DINOv3 ViTs use DinoViTAdapter.")
        depth = len(vit._flat_blocks())
        if ranges[-1][1] >= depth:
            raise ValueError(f'ViTAdapter interaction range {ranges[-1]} exceeds the ViT '
                             f'depth {depth}.')
        self.interaction_ranges = ranges
        # Never used by the adapter and absent from the official file (see the docstring).
        mask_token = vit._parameters.pop('mask_token')
        vit.register_buffer('mask_token', mask_token.detach(), persistent=False)
        vit.norm = nn.Identity()
        vit.unused_checkpoint_keys = self.UNUSED_VIT_KEYS  # its Pretrained init drops them

    def _injector_factory(self, dim: int, num_heads: int, n_points: int,
                          deform_ratio: float):
        def make() -> Injector:
            return Injector(dim, num_heads, n_points, deform_ratio, self._init_values)
        return make

    def _pos_embed(self, grid: Tuple[int, int]) -> Tensor:
        """(1, 1 + H*W, D): the stored grid resized bicubically to ``grid`` (official)."""
        pos = self.backbone.pos_embed
        n = pos.shape[1] - 1
        side = int(round(n ** 0.5))
        if side * side != n:
            raise ValueError(f'pos_embed holds {n} patch positions, not a square grid.')
        patch = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=grid, mode='bicubic', align_corners=False)
        return torch.cat([pos[:, :1], patch.flatten(2).transpose(1, 2)], dim=1)

    def _run_range(self, tokens: Tensor, first: int, last: int) -> Tensor:
        vit = self.backbone
        blocks = vit._flat_blocks()[first:last + 1]
        for blk in blocks:
            if vit.with_cp and self.training and torch.is_grad_enabled():
                tokens = torch.utils.checkpoint.checkpoint(blk, tokens, None,
                                                           use_reentrant=False)
            else:
                tokens = blk(tokens, None)
        return tokens

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return pyramid maps at strides 4, 8, 16, 32 (each ``embed_dim`` channels)."""
        h, w = x.shape[2:]
        m = self.size_divisor
        x = F.pad(x, (0, -w % m, 0, -h % m))
        b = x.shape[0]
        vit = self.backbone
        c1, c2, c3, c4 = self.spm(x)
        shapes = [tuple(c.shape[2:]) for c in (c2, c3, c4)]
        query = torch.cat([c.flatten(2).transpose(1, 2) + self.level_embed[i]
                           for i, c in enumerate((c2, c3, c4))], dim=1)
        ref_query = _reference_points(shapes, x.device)[None, :, None, :].expand(
            b, -1, 1, -1)

        grid = vit.patch_embed.grid_size(tuple(x.shape[2:]))
        p = vit.patch_embed.patch_size
        # The official patch conv drops the remainder rows / columns; so does this crop.
        tokens = vit.patch_embed(x[..., :grid[0] * p, :grid[1] * p])
        pos = self._pos_embed(grid).to(tokens.dtype)
        cls = vit.cls_token.to(tokens.dtype).expand(b, -1, -1) + pos[:, :1]
        tokens = tokens + pos[:, 1:]
        ref_vit = _reference_points([grid], x.device)[None, :, None, :].expand(b, -1, 1, -1)

        vit_maps = []
        for (first, last), block in zip(self.interaction_ranges, self.interactions):
            tokens = block.injector(tokens, ref_vit, query, shapes)
            z = self._run_range(torch.cat([cls, tokens], dim=1), first, last)
            cls, tokens = z[:, :1], z[:, 1:]
            query = block(query, ref_query, tokens, grid, shapes)
            vit_maps.append(tokens.transpose(1, 2).reshape(b, -1, *grid))
        outs = self._pyramid(c1, query, shapes, vit_maps)
        return tuple(o[..., :-(-h // s), :-(-w // s)]
                     for o, s in zip(outs, (4, 8, 16, 32)))
