"""DINOv2 / DINOv3 Vision Transformer with the official state-dict layout.

One class covers both generations; ``version`` ('v2' or 'v3', set by the ``arch``)
switches the parts that differ: learned, interpolated position embeddings and
``register_tokens`` (v2) versus RoPE and ``storage_tokens`` (v3), the final norms and
the stochastic-depth scheme.
"""
import copy
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import nn
from torch.nn.init import trunc_normal_
from torch.utils.checkpoint import checkpoint

from dino_mm.registry import MODELS
from ..layers import (Block, LayerScale, PatchEmbed, RMSNorm, RopePositionEmbedding,
                      build_norm_layer)
from ..layers.attention import LinearKMaskedBias
from .utils import load_checkpoint_strict

__all__ = ['DinoVisionTransformer', 'DINO_VIT_ARCHS']

_V2 = dict(version='v2', patch_size=14, img_size=518, ffn_ratio=4.0, ffn_layer='mlp',
           num_register_tokens=0, interpolate_antialias=False, interpolate_offset=0.1,
           qkv_bias=True, proj_bias=True, ffn_bias=True, layerscale_init=1.0,
           norm_layer='layernorm', mask_k_bias=False, untie_cls_and_patch_norms=False,
           untie_global_and_local_cls_norm=False, drop_path_uniform=False)
_V2_REG = dict(num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0.0)
_V3 = dict(version='v3', patch_size=16, img_size=224, ffn_ratio=4.0, ffn_layer='mlp',
           num_register_tokens=4, qkv_bias=True, proj_bias=True, ffn_bias=True,
           layerscale_init=1e-5, norm_layer='layernormbf16', mask_k_bias=True,
           untie_cls_and_patch_norms=False, untie_global_and_local_cls_norm=False,
           pos_embed_rope_base=100.0, pos_embed_rope_min_period=None,
           pos_embed_rope_max_period=None, pos_embed_rope_normalize_coords='separate',
           pos_embed_rope_shift_coords=None, pos_embed_rope_jitter_coords=None,
           pos_embed_rope_rescale_coords=2.0, pos_embed_rope_dtype='fp32',
           drop_path_uniform=True)


def _arch(base: dict, **kw) -> dict:
    return dict(base, **kw)


# Official hub hyper-parameters (docs/reference.md §1.1, §1.7).
DINO_VIT_ARCHS: Dict[str, dict] = {
    'dinov2_vits14': _arch(_V2, embed_dim=384, depth=12, num_heads=6),
    'dinov2_vitb14': _arch(_V2, embed_dim=768, depth=12, num_heads=12),
    'dinov2_vitl14': _arch(_V2, embed_dim=1024, depth=24, num_heads=16),
    'dinov2_vitg14': _arch(_V2, embed_dim=1536, depth=40, num_heads=24,
                           ffn_layer='swiglufused'),
    'dinov3_vits16': _arch(_V3, embed_dim=384, depth=12, num_heads=6),
    'dinov3_vits16plus': _arch(_V3, embed_dim=384, depth=12, num_heads=6, ffn_ratio=6.0,
                               ffn_layer='swiglu'),
    'dinov3_vitb16': _arch(_V3, embed_dim=768, depth=12, num_heads=12),
    'dinov3_vitl16': _arch(_V3, embed_dim=1024, depth=24, num_heads=16),
    'dinov3_vitl16plus': _arch(_V3, embed_dim=1024, depth=24, num_heads=16, ffn_ratio=6.0,
                               ffn_layer='swiglu'),
    'dinov3_vith16plus': _arch(_V3, embed_dim=1280, depth=32, num_heads=20, ffn_ratio=6.0,
                               ffn_layer='swiglu'),
    'dinov3_vit7b16': _arch(_V3, embed_dim=4096, depth=40, num_heads=32, ffn_ratio=3.0,
                            ffn_layer='swiglu64', qkv_bias=False,
                            untie_global_and_local_cls_norm=True),
    # Other architectures defined by the official DINOv3 code (no released weights).
    'dinov3_vitso400m16': _arch(_V3, embed_dim=1152, depth=27, num_heads=18,
                                ffn_ratio=3.777777778),
    'dinov3_vith16': _arch(_V3, embed_dim=1280, depth=32, num_heads=20),
    'dinov3_vitg16': _arch(_V3, embed_dim=1536, depth=40, num_heads=24),
}
for _name in ('dinov2_vits14', 'dinov2_vitb14', 'dinov2_vitl14', 'dinov2_vitg14'):
    DINO_VIT_ARCHS[_name + '_reg'] = _arch(DINO_VIT_ARCHS[_name], **_V2_REG)

_OUT_TYPES = ('cls', 'featmap', 'cls_featmap', 'raw')


class BlockChunk(nn.ModuleList):
    """A list of blocks whose leading entries are ``nn.Identity`` fillers.

    Keeps the official FSDP layout ``blocks.{chunk}.{global index}``.
    """

    def forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        for b in self:
            if not isinstance(b, nn.Identity):
                x = b(x, rope)
        return x


def _exporting() -> bool:
    """True under ``torch.jit.trace`` / ``torch.onnx.export``, where sizes are traced."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _bicubic_matrix(n_out: torch.Tensor, n_in: int, scale: torch.Tensor,
                    antialias: bool) -> torch.Tensor:
    """(n_out, n_in) matrix of 1-D bicubic resizing, as ``F.interpolate`` computes it.

    ``scale`` is input / output (float64 tensor). Without antialias: 4 taps around
    ``scale * (i + 0.5) - 0.5``, Keys kernel a = -0.75, border indices replicated. With
    antialias: the kernel (a = -0.5) is stretched by ``max(scale, 1)`` around
    ``scale * (i + 0.5)``, cut at the border and normalised to sum 1.
    """
    i = torch.arange(n_out).to(torch.float64)
    j = torch.arange(n_in).to(torch.float64)
    if not antialias:
        a = -0.75
        real = scale * (i + 0.5) - 0.5
        base = torch.floor(real)
        t = real - base

        def near(d):  # |d| <= 1
            return ((a + 2) * d - (a + 3)) * d * d + 1

        def far(d):  # 1 < |d| < 2
            return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

        taps = (far(t + 1), near(t), near(1 - t), far(2 - t))
        mat = torch.zeros_like(i)[:, None] * j[None, :]
        for k, weight in enumerate(taps):
            idx = torch.clamp(base + (k - 1), 0, n_in - 1)
            mat = mat + weight[:, None] * (idx[:, None] == j[None, :]).to(torch.float64)
        return mat.to(torch.float32)
    a = -0.5
    center = scale * (i + 0.5)
    stretch = torch.clamp(scale, min=1.0)
    d = torch.abs((j[None, :] - center[:, None] + 0.5) / stretch)
    kernel = torch.where(d < 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                         torch.where(d < 2, (((d - 5) * d + 8) * d - 4) * a,
                                     torch.zeros_like(d)))
    return (kernel / kernel.sum(dim=1, keepdim=True)).to(torch.float32)


@MODELS.register_module()
class DinoVisionTransformer(BaseModule):
    """DINOv2 / DINOv3 ViT backbone with official keys and forward API.

    Every hyper-parameter defaults to ``None`` = "take it from ``arch``".

    Args:
        arch (str | dict): A key of :data:`DINO_VIT_ARCHS` ('dinov2_vits14', ...,
            'dinov2_vitg14_reg', 'dinov3_vits16', ..., 'dinov3_vit7b16') or a dict with
            the same fields. Defaults to 'dinov2_vitb14'.
        img_size (int): Training image size; sizes the learned position embedding grid
            (v2). Hub value 518 (v2) / 224 (v3).
        patch_size (int): Patch side (14 for v2 hub models, 16 for v3).
        in_channels (int): Image channels. Defaults to 3.
        embed_dim (int): Width D.
        depth (int): Number of blocks.
        num_heads (int): Attention heads.
        ffn_ratio (float): FFN width / D (alias ``mlp_ratio``).
        ffn_layer (str): 'mlp', 'swiglufused', 'swiglu', 'swiglu32', 'swiglu64', 'swiglu128'.
        qkv_bias (bool): Bias on qkv.
        proj_bias (bool): Bias on attention output projection.
        ffn_bias (bool): Biases in the FFN.
        drop_path_rate (float): Stochastic depth rate. Defaults to 0.
        drop_path_uniform (bool): Same rate in every block (v3 always); otherwise linear
            from 0 to ``drop_path_rate`` (v2 default).
        layerscale_init (float, optional): LayerScale init (alias ``init_values``);
            None / 0 disables LayerScale. Hub: 1.0 (v2), 1e-5 (v3).
        norm_layer (str): 'layernorm' (eps 1e-6), 'layernormbf16' (eps 1e-5) or 'rmsnorm'.
        num_register_tokens (int): Register (v2) / storage (v3) tokens (alias
            ``n_storage_tokens``).
        interpolate_antialias (bool): v2 position-embedding interpolation antialias.
        interpolate_offset (float): v2 interpolation offset (0.1; 0 for register models).
        mask_k_bias (bool): v3 key-bias masking in qkv.
        untie_cls_and_patch_norms (bool): v3 separate ``cls_norm`` for cls+storage tokens.
        untie_global_and_local_cls_norm (bool): v3 ``local_cls_norm`` for the 2nd crop of
            a list input in training.
        pos_embed_rope_* : v3 RoPE settings (base, min_period, max_period,
            normalize_coords, shift_coords, jitter_coords, rescale_coords, dtype).
        block_chunks (int): Split blocks into FSDP chunks (keys ``blocks.{c}.{i}``).
            Defaults to 0 (flat ``blocks.{i}``).
        out_type (str): Output of :meth:`forward`: 'cls' (normalised class token, like
            the official model), 'featmap' (NCHW patch maps), 'cls_featmap' ((map, cls)
            pairs) or 'raw' (all tokens). Defaults to 'cls'.
        out_indices (Sequence[int], optional): Blocks whose outputs :meth:`forward`
            returns (negative allowed). None = last block only; 'cls' without
            ``out_indices`` returns a single (B, D) tensor.
        norm_out (bool): Apply the final norm to outputs of :meth:`forward`. Defaults
            to True.
        frozen_stages (int): -1 freezes nothing; 0 freezes patch embed, tokens and the
            position embedding (v2 ``pos_embed``; v3 ``rope_embed`` stays in eval mode, so
            no RoPE train-time augmentation); N also freezes blocks 0..N-1 (and the final
            norms when N >= depth). Frozen modules stay in eval mode through ``.train()``.
        with_cp (bool): Gradient checkpointing per block. Defaults to False.
        use_xformers (bool): Use xFormers on CUDA when installed. Defaults to True.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=PATH,
            prefix=None)`` loads a checkpoint strictly in :meth:`init_weights` (official,
            HF transformers or timm layout; a file or a HF model folder, see
            :func:`~dino_mm.models.backbones.utils.load_checkpoint_strict`).
    """

    #: :meth:`interpolate_pos_encoding` follows traced sizes, so exported graphs (TorchScript
    #: trace, ONNX) of DINOv2 work at every input size (see :mod:`dino_mm.apis.export`).
    traceable_pos_embed = True

    def __init__(self, arch: Union[str, dict] = 'dinov2_vitb14', *,
                 img_size: Optional[int] = None, patch_size: Optional[int] = None,
                 in_channels: int = 3, embed_dim: Optional[int] = None,
                 depth: Optional[int] = None, num_heads: Optional[int] = None,
                 ffn_ratio: Optional[float] = None, ffn_layer: Optional[str] = None,
                 qkv_bias: Optional[bool] = None, proj_bias: Optional[bool] = None,
                 ffn_bias: Optional[bool] = None, drop_path_rate: float = 0.0,
                 drop_path_uniform: Optional[bool] = None,
                 layerscale_init: Optional[float] = -1.0, norm_layer: Optional[str] = None,
                 num_register_tokens: Optional[int] = None,
                 interpolate_antialias: Optional[bool] = None,
                 interpolate_offset: Optional[float] = None,
                 mask_k_bias: Optional[bool] = None,
                 untie_cls_and_patch_norms: Optional[bool] = None,
                 untie_global_and_local_cls_norm: Optional[bool] = None,
                 pos_embed_rope_base: Optional[float] = -1.0,
                 pos_embed_rope_min_period: Optional[float] = None,
                 pos_embed_rope_max_period: Optional[float] = None,
                 pos_embed_rope_normalize_coords: Optional[str] = None,
                 pos_embed_rope_shift_coords: Optional[float] = -1.0,
                 pos_embed_rope_jitter_coords: Optional[float] = -1.0,
                 pos_embed_rope_rescale_coords: Optional[float] = -1.0,
                 pos_embed_rope_dtype: Optional[str] = None,
                 block_chunks: int = 0, out_type: str = 'cls',
                 out_indices: Optional[Sequence[int]] = None, norm_out: bool = True,
                 frozen_stages: int = -1, with_cp: bool = False, use_xformers: bool = True,
                 init_cfg: Optional[dict] = None, **aliases) -> None:
        super().__init__(init_cfg=init_cfg)
        cfg = self._resolve_arch(arch)
        # Official argument names accepted as aliases.
        alias_map = {'mlp_ratio': 'ffn_ratio', 'init_values': 'layerscale_init',
                     'n_storage_tokens': 'num_register_tokens', 'in_chans': 'in_channels'}
        for k, v in aliases.items():
            if k not in alias_map:
                raise TypeError(f'DinoVisionTransformer got an unexpected argument {k!r}.')
            if alias_map[k] == 'in_channels':
                in_channels = v
            else:
                cfg[alias_map[k]] = v
        explicit = dict(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim,
                        depth=depth, num_heads=num_heads, ffn_ratio=ffn_ratio,
                        ffn_layer=ffn_layer, qkv_bias=qkv_bias, proj_bias=proj_bias,
                        ffn_bias=ffn_bias, drop_path_uniform=drop_path_uniform,
                        norm_layer=norm_layer, num_register_tokens=num_register_tokens,
                        interpolate_antialias=interpolate_antialias,
                        interpolate_offset=interpolate_offset, mask_k_bias=mask_k_bias,
                        untie_cls_and_patch_norms=untie_cls_and_patch_norms,
                        untie_global_and_local_cls_norm=untie_global_and_local_cls_norm,
                        pos_embed_rope_normalize_coords=pos_embed_rope_normalize_coords,
                        pos_embed_rope_dtype=pos_embed_rope_dtype)
        cfg.update({k: v for k, v in explicit.items() if v is not None})
        # None is meaningful for these (disable), so -1 marks "not given".
        for k, v in dict(layerscale_init=layerscale_init, pos_embed_rope_base=pos_embed_rope_base,
                         pos_embed_rope_shift_coords=pos_embed_rope_shift_coords,
                         pos_embed_rope_jitter_coords=pos_embed_rope_jitter_coords,
                         pos_embed_rope_rescale_coords=pos_embed_rope_rescale_coords).items():
            if v != -1.0:
                cfg[k] = v
        if pos_embed_rope_min_period is not None or pos_embed_rope_max_period is not None:
            cfg.update(pos_embed_rope_min_period=pos_embed_rope_min_period,
                       pos_embed_rope_max_period=pos_embed_rope_max_period)
            if pos_embed_rope_base == -1.0:
                cfg['pos_embed_rope_base'] = None
        self.arch_settings = cfg
        self.version = version = cfg['version']
        if out_type not in _OUT_TYPES:
            raise ValueError(f'out_type must be one of {_OUT_TYPES}, got {out_type!r}.')

        D, L = cfg['embed_dim'], cfg['depth']
        self.embed_dim = self.num_features = D
        self.num_heads = cfg['num_heads']
        self.patch_size = cfg['patch_size']
        self.img_size = cfg['img_size']
        self.n_blocks = L
        self.num_register_tokens = self.n_storage_tokens = R = cfg['num_register_tokens']
        self.num_prefix_tokens = 1 + R
        self.interpolate_antialias = cfg.get('interpolate_antialias', False)
        self.interpolate_offset = cfg.get('interpolate_offset', 0.1)
        self.untie_cls_and_patch_norms = cfg['untie_cls_and_patch_norms']
        self.untie_global_and_local_cls_norm = cfg['untie_global_and_local_cls_norm']
        self.out_type = out_type
        self.out_indices = None if out_indices is None else [
            self._check_index(i, L) for i in out_indices]
        self.norm_out = norm_out
        self.frozen_stages = frozen_stages
        self.with_cp = with_cp
        self.block_chunks = block_chunks

        self.patch_embed = PatchEmbed(self.patch_size, in_channels, D,
                                      strict_img_size=version == 'v2')
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        if version == 'v2':
            grid = self.img_size // self.patch_size
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, D))
            self.register_tokens = nn.Parameter(torch.zeros(1, R, D)) if R else None
            self.rope_embed = None
        else:
            self.storage_tokens = nn.Parameter(torch.zeros(1, R, D)) if R else None
            self.rope_embed = RopePositionEmbedding(
                D, self.num_heads, base=cfg['pos_embed_rope_base'],
                min_period=cfg['pos_embed_rope_min_period'],
                max_period=cfg['pos_embed_rope_max_period'],
                normalize_coords=cfg['pos_embed_rope_normalize_coords'],
                shift_coords=cfg['pos_embed_rope_shift_coords'],
                jitter_coords=cfg['pos_embed_rope_jitter_coords'],
                rescale_coords=cfg['pos_embed_rope_rescale_coords'],
                dtype=cfg['pos_embed_rope_dtype'])
        self.mask_token = nn.Parameter(torch.zeros(1, D))

        if cfg['drop_path_uniform'] or version == 'v3':
            dpr = [drop_path_rate] * L
        else:
            dpr = [drop_path_rate * i / max(L - 1, 1) for i in range(L)]
        norm_factory = build_norm_layer(cfg['norm_layer'])
        blocks = [
            Block(D, self.num_heads, ffn_ratio=cfg['ffn_ratio'], qkv_bias=cfg['qkv_bias'],
                  proj_bias=cfg['proj_bias'], ffn_bias=cfg['ffn_bias'], drop_path=dpr[i],
                  init_values=cfg['layerscale_init'], norm_layer=norm_factory,
                  ffn_layer=cfg['ffn_layer'], mask_k_bias=cfg['mask_k_bias'],
                  drop_path_mode=version) for i in range(L)
        ]
        for b in blocks:
            b.attn.use_xformers = use_xformers
        if block_chunks > 0:
            if L % block_chunks:
                raise ValueError(f'depth ({L}) must be divisible by block_chunks '
                                 f'({block_chunks}).')
            size = L // block_chunks
            self.blocks = nn.ModuleList(
                BlockChunk([nn.Identity()] * i + blocks[i:i + size]) for i in range(0, L, size))
        else:
            self.blocks = nn.ModuleList(blocks)
        self.norm = norm_factory(D)
        self.cls_norm = norm_factory(D) if self.untie_cls_and_patch_norms else None
        self.local_cls_norm = (norm_factory(D) if self.untie_global_and_local_cls_norm
                               else None)
        self.head = nn.Identity()
        self.reset_parameters()
        self._freeze_stages()

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _resolve_arch(arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            if arch not in DINO_VIT_ARCHS:
                raise KeyError(f'Unknown arch {arch!r}; choose one of '
                               f'{sorted(DINO_VIT_ARCHS)} or pass a dict.')
            return copy.deepcopy(DINO_VIT_ARCHS[arch])
        if isinstance(arch, dict):
            version = arch.get('version', 'v2')
            if version not in ('v2', 'v3'):
                raise ValueError(f"arch['version'] must be 'v2' or 'v3', got {version!r}.")
            base = _V2 if version == 'v2' else _V3
            cfg = dict(base, **arch)
            missing = {'embed_dim', 'depth', 'num_heads'} - set(cfg)
            if missing:
                raise KeyError(f'arch dict is missing {sorted(missing)}.')
            return cfg
        raise TypeError(f'arch must be a str or dict, got {type(arch).__name__}.')

    @staticmethod
    def _check_index(i: int, depth: int) -> int:
        j = i + depth if i < 0 else i
        if not 0 <= j < depth:
            raise IndexError(f'Block index {i} out of range for depth {depth}.')
        return j

    def _flat_blocks(self) -> List[Block]:
        if self.block_chunks > 0:
            return [b for chunk in self.blocks for b in chunk if not isinstance(b, nn.Identity)]
        return list(self.blocks)

    def reset_parameters(self) -> None:
        """Official from-scratch init (docs/reference.md §1.5 for v2, §1.10 for v3)."""
        def init_linear(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            if isinstance(m, LinearKMaskedBias):
                m.reset_bias_mask()

        nn.init.zeros_(self.mask_token)
        if self.version == 'v2':
            trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=1e-6)
            if self.register_tokens is not None:
                nn.init.normal_(self.register_tokens, std=1e-6)
            # The v2 code leaves the patch-embed conv at PyTorch's default init.
            self.patch_embed.proj.reset_parameters()
        else:
            self.rope_embed.reset_parameters()
            nn.init.normal_(self.cls_token, std=0.02)
            if self.storage_tokens is not None:
                nn.init.normal_(self.storage_tokens, std=0.02)
            self.patch_embed.reset_parameters()
        for m in self.modules():
            if isinstance(m, (nn.LayerNorm, LayerScale, RMSNorm)):
                m.reset_parameters()
            init_linear(m)

    @property
    def token_stride(self) -> int:
        """Input pixels per patch token side (the patch size)."""
        return self.patch_size

    #: Official checkpoint keys (or prefixes ending in '.') this model deliberately lacks;
    #: dropped by the ``Pretrained`` init (a wrapper that removes parts sets it, e.g.
    #: :class:`~dino_mm.models.segmentation.ViTAdapter`).
    unused_checkpoint_keys: Tuple[str, ...] = ()

    def init_weights(self) -> None:
        """Load ``init_cfg=dict(type='Pretrained', ...)`` strictly, else official init.

        The checkpoint is used as given when that file exists. Otherwise, when its file
        name is an official backbone file (e.g. ``checkpoints/dinov2_vits14_pretrain.pth``
        in the shipped configs), it is looked up like the hub does
        (:func:`dino_mm.hub.resolve_weights`: ``$DINO_MM_WEIGHTS``,
        ``~/.cache/dino_mm/weights``, torch.hub's checkpoint folder). A file found
        nowhere raises ``FileNotFoundError`` naming it: a config that asks for
        pretrained weights never continues with random ones.
        """
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            if 'checkpoint' not in cfg:
                raise KeyError("init_cfg of type 'Pretrained' needs a 'checkpoint' path.")
            path = self._resolve_pretrained(cfg['checkpoint'])
            load_checkpoint_strict(self, path, prefix=cfg.get('prefix'),
                                   unused=self.unused_checkpoint_keys)
        elif cfg is not None:
            super().init_weights()
        else:
            self.reset_parameters()
        self._is_init = True

    def _resolve_pretrained(self, checkpoint):
        """``init_cfg.checkpoint`` -> an existing file (see :meth:`init_weights`)."""
        from dino_mm.models.backbones.utils import resolve_backbone_file
        return resolve_backbone_file(
            checkpoint, f'{type(self).__name__} init_cfg (checkpoint={checkpoint!r})')

    # ------------------------------------------------------------------ freezing
    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        # The v3 RoPE has no parameters, but in train mode it applies its coordinate
        # augmentation (shift / jitter / rescale): frozen with the position embedding
        # (stage 0, like the v2 pos_embed), it stays in eval mode through .train().
        frozen: List[nn.Module] = [self.patch_embed]
        if self.rope_embed is not None:
            frozen.append(self.rope_embed)
        params = [self.cls_token, self.mask_token]
        for name in ('pos_embed', 'register_tokens', 'storage_tokens'):
            p = getattr(self, name, None)
            if isinstance(p, nn.Parameter):
                params.append(p)
        blocks = self._flat_blocks()
        frozen += blocks[:self.frozen_stages]
        if self.frozen_stages >= self.n_blocks:
            frozen += [m for m in (self.norm, self.cls_norm, self.local_cls_norm) if m is not None]
        for p in params:
            p.requires_grad = False
        for m in frozen:
            m.eval()
            for p in m.parameters():
                p.requires_grad = False
        self._frozen_modules = frozen

    def train(self, mode: bool = True) -> 'DinoVisionTransformer':
        super().train(mode)
        if mode and self.frozen_stages >= 0:
            for m in self._frozen_modules:
                m.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (``torch.utils.checkpoint``)."""
        self.with_cp = enable

    # ------------------------------------------------------------------ tokens
    def interpolate_pos_encoding(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Position embedding for an ``h`` x ``w`` image (v2), official interpolation.

        While tracing (``torch.jit.trace``, ``torch.onnx.export``) the same interpolation
        is computed with tensor arithmetic on the traced sizes
        (:meth:`_interpolate_pos_encoding_traceable`), so one exported graph serves every
        input size.
        """
        if _exporting():
            return self._interpolate_pos_encoding_traceable(x, h, w)
        n_patch = x.shape[1] - 1
        n_stored = self.pos_embed.shape[1] - 1
        # Early return only when both the count and squareness match (official rule).
        if n_patch == n_stored and w == h:
            return self.pos_embed
        dtype = x.dtype
        pos = self.pos_embed.float()
        M = int(math.sqrt(n_stored))
        if M * M != n_stored:
            raise ValueError(f'pos_embed holds {n_stored} patch positions, not a square grid.')
        h0, w0 = h // self.patch_size, w // self.patch_size
        if self.interpolate_offset:
            # The scale factor (not the output size) sets the sampling grid of bicubic
            # interpolation; keeping it reproduces the official features exactly.
            # float() keeps the factors Python numbers when sizes are traced tensors
            # (torch.jit.trace / ONNX export), as the official code does.
            kwargs = dict(scale_factor=(float(h0 + self.interpolate_offset) / M,
                                        float(w0 + self.interpolate_offset) / M))
        else:
            kwargs = dict(size=(h0, w0))
        grid = pos[:, 1:].reshape(1, M, M, -1).permute(0, 3, 1, 2)
        with torch.autocast(device_type=x.device.type if x.device.type in ('cuda', 'cpu')
                            else 'cpu', enabled=False):
            grid = F.interpolate(grid, mode='bicubic', antialias=self.interpolate_antialias,
                                 **kwargs)
        if tuple(grid.shape[-2:]) != (h0, w0):
            raise RuntimeError(f'Position embedding interpolated to {tuple(grid.shape[-2:])}, '
                               f'expected {(h0, w0)}.')
        grid = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)
        return torch.cat([pos[:, :1], grid], dim=1).to(dtype)

    def _interpolate_pos_encoding_traceable(self, x: torch.Tensor, h, w) -> torch.Tensor:
        """:meth:`interpolate_pos_encoding` as tensor operations on (possibly traced) sizes.

        Bicubic resizing is separable and linear in the grid, so it is written as
        ``A_h @ grid @ A_w^T`` with interpolation matrices built from ``arange`` of the
        output size: the sampling positions of ``F.interpolate`` (scale-factor based with
        ``interpolate_offset``, size based and antialiased otherwise) and its cubic
        kernels. Equal to the eager path up to float rounding (~1e-7).
        """
        n_stored = self.pos_embed.shape[1] - 1
        M = int(math.sqrt(n_stored))
        if M * M != n_stored:
            raise ValueError(f'pos_embed holds {n_stored} patch positions, not a square grid.')
        h, w = torch.as_tensor(h), torch.as_tensor(w)
        h0, w0 = h // self.patch_size, w // self.patch_size
        pos = self.pos_embed.float()
        # The official early return (same patch count, square image) as a selection.
        same = ((torch.as_tensor(x.shape[1]) - 1) == n_stored) & (h == w)
        mats = []
        for n_out in (h0, w0):
            if self.interpolate_offset:
                # F.interpolate with scale_factor s samples at (i + 0.5) / s - 0.5.
                scale = M / (n_out.to(torch.float64) + self.interpolate_offset)
                mat = _bicubic_matrix(n_out, M, scale, antialias=False)
            else:
                scale = M / n_out.to(torch.float64)
                mat = _bicubic_matrix(n_out, M, scale, antialias=self.interpolate_antialias)
            eye = (torch.arange(n_out)[:, None] == torch.arange(M)[None, :]).to(mat.dtype)
            mats.append(torch.where(same, eye, mat))
        grid = pos[:, 1:].reshape(1, M, M, -1).permute(0, 3, 1, 2)
        grid = torch.matmul(torch.matmul(mats[0], grid), mats[1].transpose(0, 1))
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])
        return torch.cat([pos[:, :1], grid], dim=1).to(x.dtype)

    def prepare_tokens_with_masks(self, x: torch.Tensor, masks: Optional[torch.Tensor] = None
                                  ) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Embed patches, apply masks, add class / register tokens (and v2 pos-embed).

        Returns:
            tuple: tokens (B, 1 + R + H*W, D) and the patch grid (H, W).
        """
        B, _, h, w = x.shape if x.dim() == 4 else (None, None, None, None)
        tokens = self.patch_embed(x)
        hw = self.patch_embed.grid_size((h, w))
        if masks is not None:
            if masks.shape != tokens.shape[:2]:
                raise ValueError(f'masks must have shape {tuple(tokens.shape[:2])} '
                                 f'(batch, patches), got {tuple(masks.shape)}.')
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype)[None],
                                 tokens)
        if self.version == 'v2':
            tokens = torch.cat([self.cls_token.expand(B, -1, -1).to(tokens.dtype), tokens], 1)
            tokens = tokens + self.interpolate_pos_encoding(tokens, h, w)
            if self.register_tokens is not None:
                tokens = torch.cat([tokens[:, :1], self.register_tokens.expand(B, -1, -1)
                                    .to(tokens.dtype), tokens[:, 1:]], dim=1)
            return tokens, hw
        cls_token = self.cls_token
        if masks is None:
            # Keeps mask_token in the autograd graph (as upstream) without changing values.
            cls_token = cls_token + 0 * self.mask_token
        prefix = [cls_token.expand(B, -1, -1)]
        if self.storage_tokens is not None:
            prefix.append(self.storage_tokens.expand(B, -1, -1))
        return torch.cat([p.to(tokens.dtype) for p in prefix] + [tokens], dim=1), hw

    def _run_blocks(self, x: torch.Tensor, hw: Tuple[int, int],
                    take: Optional[Sequence[int]] = None) -> Tuple[torch.Tensor, list]:
        outputs = []
        take = set(take or ())
        for i, blk in enumerate(self._flat_blocks()):
            rope = self.rope_embed(H=hw[0], W=hw[1]) if self.rope_embed is not None else None
            if self.with_cp and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, rope, use_reentrant=False)
            else:
                x = blk(x, rope)
            if i in take:
                outputs.append(x)
        return x, outputs

    def _norm_tokens(self, x: torch.Tensor, local_crop: bool = False) -> torch.Tensor:
        """Final norm of all tokens; v3 may use a separate norm for cls + storage."""
        p = self.num_prefix_tokens
        if local_crop and self.local_cls_norm is not None:
            prefix_norm = self.local_cls_norm
        elif self.cls_norm is not None:
            prefix_norm = self.cls_norm
        else:
            return self.norm(x)
        return torch.cat([prefix_norm(x[:, :p]), self.norm(x[:, p:])], dim=1)

    # ------------------------------------------------------------------ official API
    def forward_features(self, x: Union[torch.Tensor, List[torch.Tensor]],
                         masks: Union[None, torch.Tensor, List[Optional[torch.Tensor]]] = None
                         ) -> Union[Dict[str, torch.Tensor], List[Dict[str, torch.Tensor]]]:
        """Run the backbone and return the official output dict.

        Args:
            x (Tensor | list[Tensor]): (B, C, H, W) images, or a list of such batches of
                different sizes (multi-crop), processed one after the other.
            masks (Tensor | list, optional): Bool (B, H/p * W/p) masks (or one per list
                element); masked patch embeddings are replaced by ``mask_token``.

        Returns:
            dict | list[dict]: ``x_norm_clstoken``, ``x_norm_regtokens`` (v2) or
            ``x_storage_tokens`` (v3), ``x_norm_patchtokens``, ``x_prenorm``, ``masks``.
        """
        if isinstance(x, (list, tuple)):
            masks_list = masks if masks is not None else [None] * len(x)
            if len(masks_list) != len(x):
                raise ValueError(f'Got {len(x)} crops but {len(masks_list)} masks.')
            return [self._forward_features_single(xi, mi, local_crop=idx == 1)
                    for idx, (xi, mi) in enumerate(zip(x, masks_list))]
        return self._forward_features_single(x, masks)

    def _forward_features_single(self, x: torch.Tensor, masks: Optional[torch.Tensor],
                                 local_crop: bool = False) -> Dict[str, torch.Tensor]:
        tokens, hw = self.prepare_tokens_with_masks(x, masks)
        tokens, _ = self._run_blocks(tokens, hw)
        # local_cls_norm is a training-time feature of the 2nd list element only.
        normed = self._norm_tokens(tokens, local_crop=local_crop and self.training)
        p = self.num_prefix_tokens
        out = {'x_norm_clstoken': normed[:, 0]}
        key = 'x_norm_regtokens' if self.version == 'v2' else 'x_storage_tokens'
        out[key] = normed[:, 1:p]
        out.update(x_norm_patchtokens=normed[:, p:], x_prenorm=tokens, masks=masks)
        return out

    def get_intermediate_layers(self, x: torch.Tensor, n: Union[int, Sequence[int]] = 1,
                                reshape: bool = False, return_class_token: bool = False,
                                norm: bool = True, return_extra_tokens: bool = False
                                ) -> tuple:
        """Outputs of several blocks, official semantics.

        Args:
            x (Tensor): (B, C, H, W) images.
            n (int | Sequence[int]): Last ``n`` blocks, or these block indices.
            reshape (bool): Patch tokens as (B, D, H/p, W/p). Defaults to False.
            return_class_token (bool): Also return the class token. Defaults to False.
            norm (bool): Apply the final norm. Defaults to True.
            return_extra_tokens (bool): Also return register / storage tokens.

        Returns:
            tuple: per block, the patch tokens, or a tuple (patches[, cls][, extra]).
        """
        L = self.n_blocks
        take = range(L - n, L) if isinstance(n, int) else [self._check_index(i, L) for i in n]
        if isinstance(n, int) and not 0 < n <= L:
            raise ValueError(f'n={n} must be in [1, {L}].')
        tokens, hw = self.prepare_tokens_with_masks(x)
        _, outputs = self._run_blocks(tokens, hw, take)
        if len(outputs) != len(set(take)):
            raise RuntimeError(f'Only {len(outputs)} of {len(take)} blocks were collected.')
        if norm:
            outputs = [self._norm_tokens(o) for o in outputs]
        p = self.num_prefix_tokens
        cls_tokens = [o[:, 0] for o in outputs]
        extra = [o[:, 1:p] for o in outputs]
        patches = [o[:, p:] for o in outputs]
        if reshape:
            B = x.shape[0]
            patches = [o.reshape(B, hw[0], hw[1], -1).permute(0, 3, 1, 2).contiguous()
                       for o in patches]
        if return_class_token and return_extra_tokens:
            return tuple(zip(patches, cls_tokens, extra))
        if return_class_token:
            return tuple(zip(patches, cls_tokens))
        if return_extra_tokens:
            return tuple(zip(patches, extra))
        return tuple(patches)

    def forward(self, x: torch.Tensor):
        """mmpretrain-style output selected by ``out_type`` / ``out_indices``.

        Returns:
            Tensor | tuple: with ``out_type='cls'`` and no ``out_indices``, the
            normalised class token (B, D) as the official ``forward``; otherwise a tuple
            with one entry per index: (B, D) class tokens ('cls'), NCHW maps
            ('featmap'), (map, cls) pairs ('cls_featmap') or (B, N, D) tokens ('raw').
        """
        if self.out_indices is None and self.out_type == 'cls':
            return self.head(self.forward_features(x)['x_norm_clstoken'])
        indices = self.out_indices if self.out_indices is not None else [-1]
        indices = [self._check_index(i, self.n_blocks) for i in indices]
        tokens, hw = self.prepare_tokens_with_masks(x)
        _, outputs = self._run_blocks(tokens, hw, indices)
        order = sorted(set(indices))
        by_index = dict(zip(order, outputs))
        outs = []
        p = self.num_prefix_tokens
        for i in indices:
            o = by_index[i]
            if self.norm_out:
                o = self._norm_tokens(o)
            if self.out_type == 'raw':
                outs.append(o)
                continue
            cls = o[:, 0]
            if self.out_type == 'cls':
                outs.append(cls)
                continue
            fmap = o[:, p:].reshape(o.shape[0], hw[0], hw[1], -1).permute(0, 3, 1, 2)
            fmap = fmap.contiguous()
            outs.append(fmap if self.out_type == 'featmap' else (fmap, cls))
        return tuple(outs)
