"""DINOv3 ConvNeXt backbones (tiny / small / base / large).

The module tree mirrors the official DINOv3 ConvNeXt so that its ``state_dict()`` uses the
official key names (``downsample_layers.*``, ``stages.{s}.{b}.*``, ``norm.*`` and the
``norms.3.*`` alias of ``norm``) and an official checkpoint loads with ``strict=True``.
On top of the official ``forward_features`` / ``get_intermediate_layers`` API it offers the
OpenMMLab conventions (``out_indices``, ``out_type``, ``frozen_stages``, ``init_cfg``).
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from timm.layers import DropPath, LayerNorm2d, trunc_normal_

from dino_mm.registry import MODELS

__all__ = ['DinoConvNeXt', 'ConvNeXtBlock', 'CONVNEXT_ARCH_ZOO']

# Hyper-parameters of the released DINOv3 ConvNeXts (docs/reference.md §1.11).
CONVNEXT_ARCH_ZOO: Dict[str, Dict[str, List[int]]] = {
    'tiny': dict(depths=[3, 3, 9, 3], dims=[96, 192, 384, 768]),
    'small': dict(depths=[3, 3, 27, 3], dims=[96, 192, 384, 768]),
    'base': dict(depths=[3, 3, 27, 3], dims=[128, 256, 512, 1024]),
    'large': dict(depths=[3, 3, 27, 3], dims=[192, 384, 768, 1536]),
}

_OUT_TYPES = ('cls', 'featmap', 'cls_featmap', 'avg_featmap')


def _resolve_arch(arch: Union[str, dict]) -> Dict[str, List[int]]:
    """Return ``{'depths', 'dims'}`` for an arch name (``'tiny'``, ``'dinov3_convnext_tiny'``,
    ``'convnext_tiny'``) or an explicit dict."""
    if isinstance(arch, dict):
        missing = {'depths', 'dims'} - set(arch)
        if missing:
            raise KeyError(f'DinoConvNeXt: a custom arch dict needs the keys {sorted(missing)}; '
                           f'got {sorted(arch)}.')
        return dict(depths=list(arch['depths']), dims=list(arch['dims']))
    name = str(arch).lower()
    for prefix in ('dinov3_convnext_', 'convnext_'):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if name not in CONVNEXT_ARCH_ZOO:
        raise ValueError(f'DinoConvNeXt: unknown arch {arch!r}; choose one of '
                         f'{sorted(CONVNEXT_ARCH_ZOO)} (optionally prefixed with '
                         f"'dinov3_convnext_'), or pass a dict with 'depths' and 'dims'.")
    return {k: list(v) for k, v in CONVNEXT_ARCH_ZOO[name].items()}


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block: 7x7 depth-wise conv, channels-last LayerNorm, MLP, layer scale.

    Attribute names (``dwconv``, ``norm``, ``pwconv1``, ``pwconv2``, ``gamma``) are the
    official ones so checkpoints load unchanged.

    Args:
        dim (int): Number of channels.
        drop_path (float): Stochastic depth rate of the residual branch. Defaults to 0.
        layer_scale_init_value (float): Initial value of ``gamma``; ``<= 0`` disables
            layer scale. Defaults to 1e-6.
    """

    def __init__(self, dim: int, drop_path: float = 0.0,
                 layer_scale_init_value: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = (nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
                      if layer_scale_init_value > 0 else None)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        # Channels-last for the LayerNorm and the two Linears (the official layout; nn.Linear
        # is faster than 1x1 convs here and keeps the official 2-D weight shapes).
        x = self.dwconv(x).permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        if self.gamma is not None:
            x = x * self.gamma
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))


@MODELS.register_module()
class DinoConvNeXt(BaseModule):
    """DINOv3 ConvNeXt backbone with official key names and mm*-style outputs.

    Args:
        arch (str | dict): ``'tiny'``, ``'small'``, ``'base'``, ``'large'`` (the prefixes
            ``'dinov3_convnext_'`` / ``'convnext_'`` are accepted), or a dict with
            ``depths`` and ``dims``. Defaults to ``'tiny'``.
        in_chans (int): Input channels. Defaults to 3.
        depths (Sequence[int], optional): Blocks per stage; overrides ``arch``.
        dims (Sequence[int], optional): Channels per stage; overrides ``arch``.
        drop_path_rate (float): Stochastic depth rate, increased linearly over all blocks
            (official schedule). Defaults to 0.
        layer_scale_init_value (float): Initial layer-scale value. Defaults to 1e-6.
        patch_size (int, optional): When set, :meth:`get_intermediate_layers` resizes the
            maps to ``(H // patch_size, W // patch_size)`` like the official model, so they
            line up with a ViT of that patch size. Defaults to None.
        out_indices (Sequence[int], optional): Stages (0-3, negatives allowed) returned by
            :meth:`forward` for dense tasks. Defaults to None (only the class token).
        out_type (str, optional): What :meth:`forward` returns: ``'cls'`` the normalised
            pooled token (B, C) like the official model (with ``out_indices``: a tuple of
            pooled tokens per stage, as ``DinoVisionTransformer`` does); ``'featmap'`` a
            tuple of NCHW maps for ``out_indices``; ``'cls_featmap'`` a tuple of
            ``(map, pooled)`` pairs; ``'avg_featmap'`` is an alias of ``'cls'`` with
            ``out_indices``. Defaults to None: ``'cls'`` without ``out_indices``,
            ``'featmap'`` with them.
        norm_featmaps (bool): Apply ``norms[i]`` (identity for stages 0-2, the final
            LayerNorm for stage 3) to the maps/pooled tokens returned by :meth:`forward`,
            as official ``get_intermediate_layers(norm=True)`` does. Defaults to True.
        frozen_stages (int): Freeze (no grad, eval mode) the first ``frozen_stages`` stages
            with their down-samplers; 4 also freezes the final norm. Defaults to 0.
        init_cfg (dict | list[dict], optional): MMEngine init config, e.g.
            ``dict(type='Pretrained', checkpoint='dinov3_convnext_tiny_....pth')``.
            Defaults to None (official random init).
    """

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 in_chans: int = 3,
                 depths: Optional[Sequence[int]] = None,
                 dims: Optional[Sequence[int]] = None,
                 drop_path_rate: float = 0.0,
                 layer_scale_init_value: float = 1e-6,
                 patch_size: Optional[int] = None,
                 out_indices: Optional[Sequence[int]] = None,
                 out_type: Optional[str] = None,
                 norm_featmaps: bool = True,
                 frozen_stages: int = 0,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        cfg = _resolve_arch(arch)
        depths = list(depths) if depths is not None else cfg['depths']
        dims = list(dims) if dims is not None else cfg['dims']
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f'DinoConvNeXt: depths and dims need 4 entries (one per stage); '
                             f'got depths={depths}, dims={dims}.')
        self.depths, self.embed_dims = depths, dims
        self.embed_dim = dims[-1]
        self.n_blocks = len(depths)
        self.n_storage_tokens = 0
        self.chunked_blocks = False
        self.patch_size = patch_size

        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(
            nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4),
                          LayerNorm2d(dims[0], eps=1e-6)))
        for i in range(1, 4):
            self.downsample_layers.append(
                nn.Sequential(LayerNorm2d(dims[i - 1], eps=1e-6),
                              nn.Conv2d(dims[i - 1], dims[i], kernel_size=2, stride=2)))

        rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.stages = nn.ModuleList()
        start = 0
        for i in range(4):
            self.stages.append(nn.Sequential(*[
                ConvNeXtBlock(dims[i], drop_path=rates[start + j],
                              layer_scale_init_value=layer_scale_init_value)
                for j in range(depths[i])
            ]))
            start += depths[i]

        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        # The official model registers the final norm a second time as ``norms[3]`` so
        # per-stage norms can be indexed uniformly; the alias puts ``norms.3.*`` into the
        # state dict, which strict loading of official checkpoints requires.
        self.norms = nn.ModuleList([nn.Identity(), nn.Identity(), nn.Identity(), self.norm])
        self.head = nn.Identity()

        if out_indices is not None:
            out_indices = [int(i) for i in out_indices]
            for i in out_indices:
                if not -4 <= i < 4:
                    raise ValueError(f'DinoConvNeXt: out_indices entry {i} is not a stage '
                                     f'index in [-4, 3].')
            out_indices = [i % 4 for i in out_indices]
        if out_type is None:
            out_type = 'cls' if out_indices is None else 'featmap'
        if out_type not in _OUT_TYPES:
            raise ValueError(f'DinoConvNeXt: out_type={out_type!r} is not one of {_OUT_TYPES}.')
        if out_type == 'avg_featmap':
            out_type = 'cls'
            out_indices = out_indices if out_indices is not None else [0, 1, 2, 3]
        if out_type != 'cls' and out_indices is None:
            out_indices = [0, 1, 2, 3]
        self.out_indices = out_indices
        self.out_type = out_type
        self.norm_featmaps = norm_featmaps
        if not 0 <= frozen_stages <= 4:
            raise ValueError(f'DinoConvNeXt: frozen_stages={frozen_stages} must be in [0, 4].')
        self.frozen_stages = frozen_stages

        self._official_init()
        self._freeze_stages()

    # ------------------------------------------------------------------ init / freezing
    def _official_init(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()

    #: Input pixels per side of a ``forward_features`` patch token (stem 4, then 3 x 2).
    token_stride = 32

    def init_weights(self) -> None:
        """Official random init, or what ``init_cfg`` asks for.

        ``dict(type='Pretrained', checkpoint=PATH, prefix=None)`` loads the checkpoint
        strictly with :func:`~dino_mm.models.backbones.utils.load_checkpoint_strict`
        (official, HF transformers or timm layout; a file or a HF model folder).
        """
        cfg = self.init_cfg
        if cfg is None:
            self._official_init()
        elif isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            if 'checkpoint' not in cfg:
                raise KeyError("init_cfg of type 'Pretrained' needs a 'checkpoint' path.")
            from .utils import load_checkpoint_strict
            load_checkpoint_strict(self, cfg['checkpoint'], prefix=cfg.get('prefix'))
            self._is_init = True
        else:
            super().init_weights()
        self._freeze_stages()

    def _freeze_stages(self) -> None:
        frozen: List[nn.Module] = []
        for i in range(self.frozen_stages):
            frozen += [self.downsample_layers[i], self.stages[i]]
        if self.frozen_stages == 4:
            frozen.append(self.norm)
        for m in frozen:
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> 'DinoConvNeXt':
        super().train(mode)
        self._freeze_stages()
        return self

    # ------------------------------------------------------------------ official API
    def _forward_stages(self, x: torch.Tensor, take: Sequence[int] = ()
                        ) -> Tuple[torch.Tensor, Dict[int, torch.Tensor]]:
        maps = {}
        last = max(take, default=3)
        for i in range(last + 1):
            x = self.stages[i](self.downsample_layers[i](x))
            if i in take:
                maps[i] = x
        return x, maps

    def forward_features(self, x: Union[torch.Tensor, List[torch.Tensor]],
                         masks: Optional[torch.Tensor] = None
                         ) -> Union[Dict[str, torch.Tensor], List[Dict[str, torch.Tensor]]]:
        """Official output dict (``x_norm_clstoken`` = normalised spatial mean).

        ``masks`` is passed through untouched: a ConvNeXt cannot mask tokens (the official
        model ignores it too). A list of images gives a list of dicts.
        """
        if isinstance(x, (list, tuple)):
            if masks is None:
                masks = [None] * len(x)
            return [self.forward_features(xi, mi) for xi, mi in zip(x, masks)]
        if x.ndim != 4:
            raise ValueError(f'DinoConvNeXt expects an NCHW image batch; got shape '
                             f'{tuple(x.shape)}.')
        x, _ = self._forward_stages(x)
        pooled = x.mean(dim=(-2, -1))
        tokens = x.flatten(2).transpose(1, 2)
        normed = self.norm(torch.cat([pooled.unsqueeze(1), tokens], dim=1))
        return {
            'x_norm_clstoken': normed[:, 0],
            'x_storage_tokens': normed[:, 1:1],
            'x_norm_patchtokens': normed[:, 1:],
            'x_prenorm': tokens,
            'masks': masks,
        }

    def get_intermediate_layers(self, x: torch.Tensor, n: Union[int, Sequence[int]] = 1,
                                reshape: bool = False, return_class_token: bool = False,
                                norm: bool = True) -> Tuple:
        """Stage outputs with the official semantics.

        Args:
            x (Tensor): Images (B, 3, H, W).
            n (int | Sequence[int]): Last ``n`` stages, or these stage indices.
            reshape (bool): Return maps as (B, C, h, w) instead of tokens (B, hw, C).
            return_class_token (bool): Return ``(patches, pooled)`` pairs.
            norm (bool): Apply ``norms[i]`` (only stage 3 has a real norm).

        Returns:
            tuple: One entry per requested stage, in stage order.
        """
        h, w = x.shape[-2:]
        if isinstance(n, int):
            if not 1 <= n <= 4:
                raise ValueError(f'DinoConvNeXt.get_intermediate_layers: n={n} must be in '
                                 f'[1, 4] (there are 4 stages).')
            take = list(range(4 - n, 4))
        else:
            bad = [i for i in n if not -4 <= int(i) < 4]
            if bad:
                raise ValueError(f'DinoConvNeXt.get_intermediate_layers: stage indices {bad} '
                                 f'are outside [-4, 3].')
            take = sorted({int(i) % 4 for i in n})
        _, maps = self._forward_stages(x, take)
        outputs = []
        for i in take:
            fmap = maps[i]
            pooled = fmap.mean(dim=(-2, -1))
            if self.patch_size is not None:
                fmap = F.interpolate(fmap, size=(h // self.patch_size, w // self.patch_size),
                                     mode='bilinear', antialias=True)
            b, c, fh, fw = fmap.shape
            tokens = fmap.flatten(2).transpose(1, 2)
            if norm:
                pooled, tokens = self.norms[i](pooled), self.norms[i](tokens)
            patches = (tokens.transpose(1, 2).reshape(b, c, fh, fw).contiguous()
                       if reshape else tokens)
            outputs.append((patches, pooled))
        if return_class_token:
            return tuple(outputs)
        return tuple(p for p, _ in outputs)

    # ------------------------------------------------------------------ mm* API
    def forward(self, x: torch.Tensor, is_training: bool = False
                ) -> Union[torch.Tensor, Dict[str, torch.Tensor], Tuple]:
        """``out_type='cls'`` without ``out_indices``: ``head(x_norm_clstoken)`` like the
        official model (the whole dict when ``is_training``); otherwise a tuple with one
        entry per ``out_indices`` stage (see ``out_type``)."""
        if self.out_type == 'cls' and self.out_indices is None:
            ret = self.forward_features(x)
            return ret if is_training else self.head(ret['x_norm_clstoken'])
        _, maps = self._forward_stages(x, self.out_indices)
        outs = []
        for i in self.out_indices:
            fmap = maps[i]
            pooled = fmap.mean(dim=(-2, -1))
            if self.norm_featmaps:
                pooled = self.norms[i](pooled)
                fmap = self.norms[i](fmap.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
            if self.out_type == 'featmap':
                outs.append(fmap)
            elif self.out_type == 'cls_featmap':
                outs.append((fmap, pooled))
            else:
                outs.append(pooled)  # 'cls' with out_indices
        return tuple(outs)
