"""Layer-wise lr decay parameter groups of the official DINOv2 / DINOv3 trainers."""
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.logging import print_log
from torch import nn

from dino_mm.registry import OPTIM_WRAPPER_CONSTRUCTORS

__all__ = ['LayerDecayOptimWrapperConstructor', 'get_layer_id', 'dino_param_multipliers']

# Parameters before the first block (layer id 0), matched as substrings of the name relative
# to the backbone, as the official rules do. The current DINOv2 rule includes
# ``register_tokens`` (releases before registers had no such entry); DINOv3 names them
# ``storage_tokens`` and its rule knows only that name. Everything else outside the blocks
# (``norm``, DINOv3 ``cls_norm`` / ``local_cls_norm``) is layer L + 1, lr_mult 1; the RoPE
# ``rope_embed.periods`` is a buffer, not a parameter, so it is in no group.
_LAYER0_NAMES = {
    'dinov2': ('pos_embed', 'patch_embed', 'mask_token', 'cls_token', 'register_tokens'),
    'dinov3': ('pos_embed', 'patch_embed', 'mask_token', 'cls_token', 'storage_tokens'),
}
_BLOCK_RE = re.compile(r'(?:^|\.)blocks\.(\d+)\.(\d+\.)?')


def get_layer_id(local_name: str, num_layers: int, variant: str = 'dinov2') -> int:
    """Layer id of a backbone parameter (0 = embeddings, i + 1 = block i, L + 1 = rest).

    Args:
        local_name (str): Parameter name relative to the backbone (``blocks.3.mlp.fc1.weight``,
            or ``blocks.0.3.mlp.fc1.weight`` with FSDP block chunks, whose inner index is
            the global block index).
        num_layers (int): Number of transformer blocks L.
        variant (str): ``'dinov2'`` or ``'dinov3'`` (which token names are layer 0).

    Returns:
        int: The layer id.
    """
    if any(key in local_name for key in _LAYER0_NAMES[variant]):
        return 0
    match = _BLOCK_RE.search(local_name)
    if match is not None and '.residual.' not in local_name:
        index = match.group(2) if match.group(2) is not None else match.group(1)
        return int(index.rstrip('.')) + 1
    return num_layers + 1


def dino_param_multipliers(name: str,
                           local_name: Optional[str],
                           num_layers: int,
                           layer_decay_rate: float = 1.0,
                           patch_embed_lr_mult: float = 1.0,
                           dino_head_wd_multiplier: float = 1.0,
                           variant: str = 'dinov2') -> Dict[str, object]:
    """Official ``lr_mult`` / ``wd_mult`` / ``is_last_layer`` of one parameter.

    Args:
        name (str): Full parameter name in the model.
        local_name (str, optional): Name relative to its backbone, or None when the
            parameter is not part of a ViT backbone (heads: lr_mult 1).
        num_layers (int): Depth L of the backbone.
        layer_decay_rate (float): Layer-wise decay; lr_mult = rate ** (L + 1 - layer_id).
        patch_embed_lr_mult (float): Extra factor for ``patch_embed`` params.
        dino_head_wd_multiplier (float): DINOv3 wd factor of ``dino_head`` params.
        variant (str): ``'dinov2'`` or ``'dinov3'``.

    Returns:
        dict: ``lr_mult``, ``wd_mult`` and ``is_last_layer``.
    """
    if variant not in _LAYER0_NAMES:
        raise ValueError(f"variant must be 'dinov2' or 'dinov3', got {variant!r}.")
    rule_name = local_name if local_name is not None else name
    layer_id = num_layers + 1 if local_name is None else get_layer_id(
        local_name, num_layers, variant)
    lr_mult = layer_decay_rate**(num_layers + 1 - layer_id)
    wd_mult = 1.0
    if variant == 'dinov3' and 'dino_head' in name:
        wd_mult = dino_head_wd_multiplier
    if variant == 'dinov2':
        no_wd = rule_name.endswith('.bias') or 'norm' in rule_name or 'gamma' in rule_name
    else:
        no_wd = (rule_name.endswith('bias') or 'norm' in rule_name or 'gamma' in rule_name
                 or 'fourier_w' in rule_name)
    if no_wd:
        wd_mult = 0.0
    if 'patch_embed' in rule_name:
        lr_mult *= patch_embed_lr_mult
    return dict(lr_mult=lr_mult, wd_mult=wd_mult, is_last_layer='last_layer' in name)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Parameter groups of the official DINO trainers (layer decay, no-wd rules).

    Every trainable parameter gets ``lr_mult``, ``wd_mult`` and ``is_last_layer``
    following the official ``get_params_groups_with_decay``; parameters with equal
    triples are fused into one group (as ``fuse_params_groups`` does). Each group
    starts at ``lr = base_lr * lr_mult`` and ``weight_decay = base_wd * wd_mult`` and
    keeps the three keys, which
    :class:`~dino_mm.engine.schedulers.DINOCosineParamScheduler` reads every
    iteration.

    ViT backbones are found automatically: every module with a ``blocks`` attribute
    (``student.backbone`` in a DINO algorithm, the model itself for a plain backbone,
    ``backbone`` in a classifier) is a root; names relative to it decide the layer
    id, L is its number of blocks. Parameters outside any root (DINO/iBOT heads,
    classifier heads) get lr_mult 1. Frozen parameters (the EMA teacher) are skipped.

    ``paramwise_cfg`` keys:

    - ``layer_decay_rate`` (float): official ``optim.layerwise_decay``. Default 1.0.
    - ``patch_embed_lr_mult`` (float): Default 1.0 (official configs: 0.2).
    - ``dino_head_wd_multiplier`` (float): DINOv3 only: wd factor of parameters whose full
      name contains ``dino_head``. Default 1.0. (The official trainer tests the name
      relative to each head, which never contains ``dino_head``, so there the option has
      no effect; every released config sets 1.0, where both agree.)
    - ``variant`` (str): ``'dinov2'`` (default) or ``'dinov3'``: layer-0 token names
      and no-wd rules of that repository.
    - ``num_layers`` (int, optional): Override the detected depth.
    - ``schedule_groups`` (dict, optional): ``{group name: parameter name prefix}``, e.g.
      ``{'convnext_tiny': 'students.convnext_tiny.'}``. Each parameter group records the
      name whose prefix its parameters have (``group['schedule_group']``, None for the
      rest), and groups are never fused across names, so a
      :class:`~dino_mm.engine.schedulers.DINOCosineParamScheduler` with
      ``param_group=<name>`` schedules that part of the model alone (the official
      multi-distillation gives each student its own lr and weight-decay schedule).

    Args:
        optim_wrapper_cfg (dict): Optimizer wrapper config (``optimizer`` with ``lr``
            and ``weight_decay``).
        paramwise_cfg (dict, optional): See above.
    """

    _KEYS = ('layer_decay_rate', 'patch_embed_lr_mult', 'dino_head_wd_multiplier',
             'variant', 'num_layers', 'schedule_groups')

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        unknown = set(paramwise_cfg) - set(self._KEYS)
        if unknown:
            raise KeyError(f'LayerDecayOptimWrapperConstructor: unknown paramwise_cfg keys '
                           f'{sorted(unknown)}; supported: {list(self._KEYS)}.')
        super().__init__(optim_wrapper_cfg, None)
        self.paramwise_cfg = paramwise_cfg
        if self.base_lr is None:
            raise KeyError('LayerDecayOptimWrapperConstructor: optim_wrapper.optimizer needs '
                           'an "lr" (the scheduler overwrites it every iteration).')
        self.layer_decay_rate = float(paramwise_cfg.get('layer_decay_rate', 1.0))
        self.patch_embed_lr_mult = float(paramwise_cfg.get('patch_embed_lr_mult', 1.0))
        self.dino_head_wd_multiplier = float(paramwise_cfg.get('dino_head_wd_multiplier', 1.0))
        self.variant = paramwise_cfg.get('variant', 'dinov2')
        if self.variant not in _LAYER0_NAMES:
            raise ValueError("paramwise_cfg.variant must be 'dinov2' or 'dinov3', got "
                             f'{self.variant!r}.')
        self.num_layers = paramwise_cfg.get('num_layers')
        self.schedule_groups = dict(paramwise_cfg.get('schedule_groups') or {})
        for group, prefix in self.schedule_groups.items():
            if not isinstance(prefix, str) or not prefix:
                raise ValueError(f'paramwise_cfg.schedule_groups[{group!r}] must be a '
                                 f'parameter name prefix (a non-empty str), got {prefix!r}.')

    @staticmethod
    def _find_backbones(model: nn.Module) -> List[Tuple[str, nn.Module]]:
        """Outermost modules with a ``blocks`` child (pre-order, nested ones skipped)."""
        roots: List[Tuple[str, nn.Module]] = []
        for name, module in model.named_modules():
            inside = any(r == '' or name.startswith(r + '.') for r, _ in roots)
            if not inside and isinstance(getattr(module, 'blocks', None), nn.Module):
                roots.append((name, module))
        return roots

    @staticmethod
    def _depth(root: nn.Module) -> int:
        indices = set()
        for name, _ in root.named_parameters():
            match = _BLOCK_RE.search(name)
            if match is not None and name.startswith('blocks.'):
                index = match.group(2) if match.group(2) is not None else match.group(1)
                indices.add(int(index.rstrip('.')))
        return len(indices)

    def param_multipliers(self, model: nn.Module) -> 'OrderedDict[str, dict]':
        """Per-parameter multipliers of every trainable parameter, in model order.

        Args:
            model (nn.Module): The model (DDP wrappers must be removed).

        Returns:
            OrderedDict: name -> dict(param, lr_mult, wd_mult, is_last_layer).
        """
        roots = self._find_backbones(model)
        depths = {r: (self.num_layers if self.num_layers is not None else self._depth(m))
                  for r, m in roots}
        out: 'OrderedDict[str, dict]' = OrderedDict()
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            root = next((r for r, _ in roots if r == '' or name.startswith(r + '.')), None)
            if root is None:
                local_name, num_layers = None, 0
            else:
                local_name = name[len(root) + 1:] if root else name
                num_layers = depths[root]
            mults = dino_param_multipliers(name, local_name, num_layers, self.layer_decay_rate,
                                           self.patch_embed_lr_mult,
                                           self.dino_head_wd_multiplier, self.variant)
            out[name] = dict(param=param, **mults)
        if not out:
            raise ValueError(f'{type(model).__name__} has no trainable parameters; nothing '
                             'to optimise.')
        return out

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '', **kwargs) -> None:
        """Append the fused official parameter groups of ``module`` to ``params``."""
        fused: 'OrderedDict[tuple, dict]' = OrderedDict()
        for name, info in self.param_multipliers(module).items():
            schedule_group = next((g for g, prefix in self.schedule_groups.items()
                                   if name.startswith(prefix)), None)
            key = (info['lr_mult'], info['wd_mult'], info['is_last_layer'], schedule_group)
            if key not in fused:
                group = dict(params=[], lr_mult=info['lr_mult'], wd_mult=info['wd_mult'],
                             is_last_layer=info['is_last_layer'],
                             lr=self.base_lr * info['lr_mult'])
                if self.schedule_groups:
                    group['schedule_group'] = schedule_group
                if self.base_wd is not None:
                    group['weight_decay'] = self.base_wd * info['wd_mult']
                fused[key] = group
            fused[key]['params'].append(info['param'])
        params.extend(fused.values())
        print_log(f'LayerDecayOptimWrapperConstructor: {len(fused)} parameter groups '
                  f'(variant={self.variant}, layer_decay_rate={self.layer_decay_rate}).',
                  logger='current')

    def __call__(self, model: nn.Module) -> OptimWrapper:
        # The parent only calls add_params when paramwise_cfg is non-empty.
        if not self.paramwise_cfg:
            self.paramwise_cfg = {'layer_decay_rate': 1.0}
        return super().__call__(model)
