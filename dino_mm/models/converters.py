"""State-dict converters between the official DINOv2/DINOv3 layouts, HF transformers and timm.

The official key names (those of the ``facebookresearch/dinov2`` / ``dinov3`` models) are
dino_mm's own, so every conversion goes through them:

* families: ``'dinov2_vit'`` (with/without registers, MLP or fused SwiGLU ``w12``),
  ``'dinov3_vit'`` (RoPE, storage tokens, masked k-bias, MLP or SwiGLU ``w1/w2/w3``) and
  ``'dinov3_convnext'``;
* layouts: ``'official'``, ``'hf'`` (transformers 5.x module names; the 4.x names found in
  files on the HF hub are accepted as input), ``'timm'``.

Official -> HF -> official is bit-exact. Conversions are lossless except where the target
format has no room for a tensor (documented at each function): HF/timm drop the DINOv3
k-bias (it is multiplied by a zero ``bias_mask`` anyway) and the RoPE periods (recomputed),
timm drops the mask token and folds DINOv2-reg's class position embedding into the class
token.

DINOv3 ``local_cls_norm`` (ViT-7B, SAT-493M ViT-L: ``untie_global_and_local_cls_norm``) is
a training-only norm of the local crops' class and storage tokens; the official model never
applies it at eval, and HF / timm files do not store it. Converting such a file back to the
official layout refills it as a copy of the final ``norm`` (``local_cls_norm=`` of
:func:`convert_state_dict`; automatic for the 7B): eval outputs are unchanged, and a resumed
pretraining starts with local crops normalised exactly as global ones.
"""
import json
import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

__all__ = [
    'FAMILIES', 'LAYOUTS', 'LayoutError', 'detect_layout', 'convert_state_dict',
    'unwrap_state_dict', 'unchunk_blocks', 'dinov3_rope_periods', 'read_checkpoint',
    'load_state_dict_file', 'save_state_dict_file', 'hf_config_from_state_dict', 'ARCH_KEY',
    'ARCH_ARGS', 'read_arch_record'
]

#: Top-level key (``.pth``) / metadata key (``.safetensors``) of the architecture record of
#: an exported backbone file: ``{'arch': 'dinov2_vits14', 'embed_dim': 96, ...}``, the
#: ``DinoVisionTransformer`` arguments, plain values only (``weights_only=True`` reads it).
ARCH_KEY = 'dino_mm_arch'
#: ``DinoVisionTransformer`` arguments that shape the weights (kept in the record).
ARCH_ARGS = (
    'img_size', 'patch_size', 'in_channels', 'embed_dim', 'depth', 'num_heads', 'ffn_ratio',
    'ffn_layer', 'qkv_bias', 'proj_bias', 'ffn_bias', 'layerscale_init', 'norm_layer',
    'num_register_tokens', 'interpolate_antialias', 'interpolate_offset', 'mask_k_bias',
    'untie_cls_and_patch_norms', 'untie_global_and_local_cls_norm', 'pos_embed_rope_base',
    'pos_embed_rope_min_period', 'pos_embed_rope_max_period',
    'pos_embed_rope_normalize_coords', 'pos_embed_rope_shift_coords',
    'pos_embed_rope_jitter_coords', 'pos_embed_rope_rescale_coords', 'pos_embed_rope_dtype',
    'mlp_ratio', 'init_values', 'n_storage_tokens', 'in_chans')
_PLAIN = (type(None), bool, int, float, str)


def read_arch_record(obj: Any, source: str = 'the checkpoint') -> Optional[Dict[str, Any]]:
    """The architecture record (:data:`ARCH_KEY`) of a checkpoint object, or None.

    Raises:
        LayoutError: the record is there but is not ``{'arch': str, ARCH_ARGS...: plain}``.
    """
    if not isinstance(obj, Mapping) or ARCH_KEY not in obj:
        return None
    rec = obj[ARCH_KEY]
    if not isinstance(rec, Mapping) or not isinstance(rec.get('arch'), str):
        raise LayoutError(f'{source}: {ARCH_KEY!r} must be a dict with a str "arch" '
                          f'(e.g. "dinov2_vits14"); got {rec!r}.')
    bad = [k for k, v in rec.items() if k != 'arch' and (
        k not in ARCH_ARGS or not isinstance(v, _PLAIN + (list, tuple)))]
    if bad:
        raise LayoutError(f'{source}: {ARCH_KEY!r} has unknown or non-plain entries {bad}; '
                          f'allowed: "arch" and {ARCH_ARGS}.')
    return dict(rec)

FAMILIES = ('dinov2_vit', 'dinov3_vit', 'dinov3_convnext')
LAYOUTS = ('official', 'hf', 'timm')

StateDict = Dict[str, torch.Tensor]


class LayoutError(ValueError):
    """Raised when a state dict matches no known layout, or a conversion is impossible."""


# ---------------------------------------------------------------------------- helpers
def unwrap_state_dict(obj: Mapping) -> StateDict:
    """Return the tensor mapping inside a checkpoint object.

    Unwraps one level of ``state_dict`` / ``model`` / ``module`` nesting and strips a
    leading ``module.`` (DDP) prefix shared by every key.
    """
    if not isinstance(obj, Mapping):
        raise LayoutError(f'expected a state dict (a mapping of names to tensors); got '
                          f'{type(obj).__name__}.')
    for key in ('state_dict', 'model', 'module'):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith('module.') for k in sd):
        sd = {k[len('module.'):]: v for k, v in sd.items()}
    return sd


_CHUNKED = re.compile(r'^blocks\.(\d+)\.(\d+)\.')


def unchunk_blocks(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Map FSDP-chunked ``blocks.{chunk}.{i}.*`` keys to flat ``blocks.{i}.*`` (the global
    block index is already ``i``, docs/reference.md §1.6)."""
    return {_CHUNKED.sub(r'blocks.\2.', k): v for k, v in sd.items()}


def dinov3_rope_periods(head_dim: int, base: float = 100.0,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """RoPE periods of the released DINOv3 ViTs: ``base ** (2j / (head_dim / 2))``.

    Evaluated the way the official module fills its buffer so a recomputed buffer is
    bit-identical to the one stored in official checkpoints.
    """
    if head_dim % 4:
        raise LayoutError(f'RoPE needs a head dim divisible by 4; got {head_dim}.')
    return base ** (2 * torch.arange(head_dim // 4, dtype=dtype) / (head_dim // 2))


def _n_blocks(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    idx = {int(m.group(1)) for k in sd for m in [rx.match(k)] if m}
    return max(idx) + 1 if idx else 0


def _has_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in sd)


# ---------------------------------------------------------------------------- detection
def detect_layout(sd: Mapping[str, torch.Tensor]) -> Tuple[str, str]:
    """Guess ``(family, layout)`` of a state dict from its key names.

    Raises:
        LayoutError: when no known layout matches; the message lists a few keys.
    """
    keys = set(sd)
    # ConvNeXt
    if 'downsample_layers.0.0.weight' in keys:
        return 'dinov3_convnext', 'official'
    if 'model.stages.0.downsample_layers.0.weight' in keys or \
            'stages.0.downsample_layers.0.weight' in keys:
        return 'dinov3_convnext', 'hf'
    if 'stem.0.weight' in keys and _has_prefix(sd, 'stages.0.blocks.0.conv_dw'):
        return 'dinov3_convnext', 'timm'
    # HF ViTs
    if 'embeddings.position_embeddings' in keys:
        return 'dinov2_vit', 'hf'
    if 'embeddings.patch_embeddings.weight' in keys and 'embeddings.cls_token' in keys:
        return 'dinov3_vit', 'hf'
    # official / timm ViTs (flat or chunked blocks)
    flat = unchunk_blocks(sd)
    if 'cls_token' in keys and 'patch_embed.proj.weight' in keys:
        if 'blocks.0.gamma_1' in flat or ('reg_token' in keys and 'pos_embed' not in keys):
            return 'dinov3_vit', 'timm'
        if 'pos_embed' in keys:
            if 'mask_token' in keys and 'reg_token' not in keys:
                return 'dinov2_vit', 'official'
            return 'dinov2_vit', 'timm'
        if 'storage_tokens' in keys or 'rope_embed.periods' in keys or 'mask_token' in keys:
            return 'dinov3_vit', 'official'
    sample = sorted(keys)[:8]
    raise LayoutError(
        f'unknown checkpoint layout: the keys match no DINOv2/DINOv3 ViT or DINOv3 ConvNeXt '
        f'in the official, HF transformers or timm naming (first keys: {sample}). If this is '
        f'a training checkpoint, extract the backbone first (tools/convert/'
        f'pretrain_to_backbone.py); otherwise pass --from/--family explicitly.')


# ---------------------------------------------------------------------------- ConvNeXt
_CNX_BLOCK_OFF_TO_HF = {'dwconv': 'depthwise_conv', 'norm': 'layer_norm',
                        'pwconv1': 'pointwise_conv1', 'pwconv2': 'pointwise_conv2',
                        'gamma': 'gamma'}
_CNX_BLOCK_OFF_TO_TIMM = {'dwconv': 'conv_dw', 'norm': 'norm', 'pwconv1': 'mlp.fc1',
                          'pwconv2': 'mlp.fc2', 'gamma': 'gamma'}


def _convnext_official_to(sd: StateDict, layout: str) -> StateDict:
    out: StateDict = {}
    blk = re.compile(r'^stages\.(\d+)\.(\d+)\.(dwconv|norm|pwconv1|pwconv2|gamma)(.*)$')
    down = re.compile(r'^downsample_layers\.(\d+)\.(\d+)\.(.*)$')
    for k, v in sd.items():
        if k.startswith('norms.'):
            continue  # alias of ``norm``; restored on the way back
        if m := blk.match(k):
            s, b, name, rest = m.groups()
            if layout == 'hf':
                out[f'model.stages.{s}.layers.{b}.{_CNX_BLOCK_OFF_TO_HF[name]}{rest}'] = v
            else:
                out[f'stages.{s}.blocks.{b}.{_CNX_BLOCK_OFF_TO_TIMM[name]}{rest}'] = v
        elif m := down.match(k):
            s, j, rest = m.groups()
            if layout == 'hf':
                out[f'model.stages.{s}.downsample_layers.{j}.{rest}'] = v
            elif s == '0':
                out[f'stem.{j}.{rest}'] = v
            else:
                out[f'stages.{s}.downsample.{j}.{rest}'] = v
        elif k.startswith('norm.'):
            out[('layer_norm.' if layout == 'hf' else 'head.norm.') + k[len('norm.'):]] = v
        else:
            raise LayoutError(f'official DINOv3 ConvNeXt: unexpected key {k!r}.')
    return out


def _convnext_to_official(sd: StateDict, layout: str) -> StateDict:
    out: StateDict = {}
    hf_to_off = {v: k for k, v in _CNX_BLOCK_OFF_TO_HF.items()}
    timm_to_off = {v: k for k, v in _CNX_BLOCK_OFF_TO_TIMM.items()}
    for k, v in sd.items():
        if layout == 'hf':
            k2 = k[len('model.'):] if k.startswith('model.stages.') else k
            if m := re.match(r'^stages\.(\d+)\.layers\.(\d+)\.(\w+)(.*)$', k2):
                s, b, name, rest = m.groups()
                out[f'stages.{s}.{b}.{hf_to_off[name]}{rest}'] = v
            elif m := re.match(r'^stages\.(\d+)\.downsample_layers\.(\d+)\.(.*)$', k2):
                out[f'downsample_layers.{m.group(1)}.{m.group(2)}.{m.group(3)}'] = v
            elif k2.startswith('layer_norm.'):
                out['norm.' + k2[len('layer_norm.'):]] = v
            else:
                raise LayoutError(f'HF DINOv3ConvNext: unexpected key {k!r}.')
        else:
            if m := re.match(r'^stages\.(\d+)\.blocks\.(\d+)\.(conv_dw|norm|mlp\.fc1|mlp\.fc2|'
                             r'gamma)(.*)$', k):
                s, b, name, rest = m.groups()
                out[f'stages.{s}.{b}.{timm_to_off[name]}{rest}'] = v
            elif m := re.match(r'^stages\.(\d+)\.downsample\.(\d+)\.(.*)$', k):
                out[f'downsample_layers.{m.group(1)}.{m.group(2)}.{m.group(3)}'] = v
            elif k.startswith('stem.'):
                out['downsample_layers.0.' + k[len('stem.'):]] = v
            elif k.startswith('head.norm.'):
                out['norm.' + k[len('head.norm.'):]] = v
            elif k.startswith('head.fc.'):
                continue  # a classifier has no place in a backbone checkpoint
            else:
                raise LayoutError(f'timm ConvNeXt: unexpected key {k!r}.')
    for name in ('weight', 'bias'):
        if f'norm.{name}' in out:
            out[f'norms.3.{name}'] = out[f'norm.{name}']
    return out


# ---------------------------------------------------------------------------- ViT -> HF
def _vit_official_to_hf(sd: StateDict, family: str) -> StateDict:
    v3 = family == 'dinov3_vit'
    out: StateDict = {}
    layer = 'model.layer' if v3 else 'encoder.layer'
    ls_attr = 'lambda1'
    for k, v in sd.items():
        m = re.match(r'^blocks\.(\d+)\.(.*)$', k)
        if m:
            i, rest = m.groups()
            p = f'{layer}.{i}.'
            if rest.startswith('attn.qkv.'):
                kind = rest[len('attn.qkv.'):]
                if kind == 'bias_mask':
                    continue
                q, kk, vv = v.chunk(3, dim=0)
                out[p + f'attention.q_proj.{kind}'] = q
                if not (v3 and kind == 'bias'):
                    # DINOv3's k-bias is multiplied by a zero mask; HF has no k-bias at all.
                    out[p + f'attention.k_proj.{kind}'] = kk
                out[p + f'attention.v_proj.{kind}'] = vv
            elif rest.startswith('attn.proj.'):
                out[p + 'attention.o_proj.' + rest[len('attn.proj.'):]] = v
            elif rest in ('ls1.gamma', 'ls2.gamma'):
                out[p + f'layer_scale{rest[2]}.{ls_attr}'] = v
            elif rest.startswith('mlp.w12.'):
                gate, up = v.chunk(2, dim=0)  # fused SwiGLU: first half is the gate
                kind = rest[len('mlp.w12.'):]
                out[p + f'mlp.gate_proj.{kind}'] = gate
                out[p + f'mlp.up_proj.{kind}'] = up
            elif rest.startswith(('mlp.w1.', 'mlp.w2.', 'mlp.w3.')):
                name = {'w1': 'gate_proj', 'w2': 'up_proj', 'w3': 'down_proj'}[rest[4:6]]
                out[p + f'mlp.{name}.' + rest[7:]] = v
            elif v3 and rest.startswith(('mlp.fc1.', 'mlp.fc2.')):
                name = 'up_proj' if rest[4:7] == 'fc1' else 'down_proj'
                out[p + f'mlp.{name}.' + rest[8:]] = v
            else:
                out[p + rest] = v  # norm1 / norm2 / (v2) mlp.fc1 / mlp.fc2
            continue
        if k == 'cls_token':
            out['embeddings.cls_token'] = v
        elif k == 'mask_token':
            out['embeddings.mask_token'] = v.reshape(1, 1, -1) if v3 else v
        elif k in ('register_tokens', 'storage_tokens'):
            out['embeddings.register_tokens'] = v
        elif k == 'pos_embed':
            out['embeddings.position_embeddings'] = v
        elif k.startswith('patch_embed.proj.'):
            kind = k[len('patch_embed.proj.'):]
            out[('embeddings.patch_embeddings.' if v3 else
                 'embeddings.patch_embeddings.projection.') + kind] = v
        elif k.startswith('norm.'):
            out[('norm.' if v3 else 'layernorm.') + k[len('norm.'):]] = v
        elif k == 'rope_embed.periods' or k.startswith('local_cls_norm.'):
            continue  # HF recomputes RoPE; the local-crop norm is training-only
        elif k.startswith('cls_norm.'):
            raise LayoutError('untied cls_norm (untie_cls_and_patch_norms) has no HF '
                              'equivalent; this checkpoint cannot be converted to HF.')
        else:
            raise LayoutError(f'official {family}: unexpected key {k!r}.')
    return out


def _vit_hf_to_official(sd: StateDict, family: str, head_dim: Optional[int],
                        rope_base: float) -> StateDict:
    v3 = family == 'dinov3_vit'
    out: StateDict = {}
    # transformers 4.x names found in hub files -> 5.x module names
    legacy = [('attention.attention.query.', 'attention.q_proj.'),
              ('attention.attention.key.', 'attention.k_proj.'),
              ('attention.attention.value.', 'attention.v_proj.'),
              ('attention.output.dense.', 'attention.o_proj.'),
              ('mlp.weights_out.', 'mlp.down_proj.')]
    blocks: Dict[int, Dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        m = re.match(r'^(?:encoder\.|model\.)?layer\.(\d+)\.(.*)$', k)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            for old, new in legacy:
                rest = rest.replace(old, new) if rest.startswith(old) else rest
            if rest.startswith('mlp.weights_in.'):
                gate, up = v.chunk(2, dim=0)
                kind = rest[len('mlp.weights_in.'):]
                blocks.setdefault(i, {})[f'mlp.gate_proj.{kind}'] = gate
                blocks.setdefault(i, {})[f'mlp.up_proj.{kind}'] = up
            else:
                blocks.setdefault(i, {})[rest] = v
            continue
        if k == 'embeddings.cls_token':
            out['cls_token'] = v
        elif k == 'embeddings.mask_token':
            out['mask_token'] = v.reshape(1, -1)
        elif k == 'embeddings.register_tokens':
            if v.shape[1] > 0 or not v3:
                out['storage_tokens' if v3 else 'register_tokens'] = v
        elif k == 'embeddings.position_embeddings':
            out['pos_embed'] = v
        elif k.startswith(('embeddings.patch_embeddings.projection.',
                           'embeddings.patch_embeddings.')):
            out['patch_embed.proj.' + k.rsplit('.', 1)[1]] = v
        elif k.startswith(('layernorm.', 'norm.')):
            out['norm.' + k.rsplit('.', 1)[1]] = v
        elif k.startswith(('pooler.', 'classifier.')):
            continue
        else:
            raise LayoutError(f'HF {family}: unexpected key {k!r}.')

    for i in sorted(blocks):
        b, p = blocks[i], f'blocks.{i}.'
        q_w = b.pop('attention.q_proj.weight')
        out[p + 'attn.qkv.weight'] = torch.cat(
            [q_w, b.pop('attention.k_proj.weight'), b.pop('attention.v_proj.weight')])
        if 'attention.q_proj.bias' in b:
            q_b, v_b = b.pop('attention.q_proj.bias'), b.pop('attention.v_proj.bias')
            k_b = b.pop('attention.k_proj.bias', None)
            if k_b is None:
                k_b = torch.zeros_like(q_b)
            out[p + 'attn.qkv.bias'] = torch.cat([q_b, k_b, v_b])
            if v3:
                ones = torch.ones_like(q_b)
                out[p + 'attn.qkv.bias_mask'] = torch.cat([ones, torch.zeros_like(q_b), ones])
        for rest, v in b.items():
            if rest.startswith('attention.o_proj.'):
                out[p + 'attn.proj.' + rest[len('attention.o_proj.'):]] = v
            elif rest.startswith(('layer_scale1.', 'layer_scale2.')):
                out[p + f'ls{rest[11]}.gamma'] = v
            elif rest.startswith(('norm1.', 'norm2.')):
                out[p + rest] = v
            elif rest.startswith('mlp.gate_proj.'):
                kind = rest[len('mlp.gate_proj.'):]
                if v3:
                    out[p + 'mlp.w1.' + kind] = v
                else:
                    out[p + 'mlp.w12.' + kind] = torch.cat([v, b['mlp.up_proj.' + kind]])
            elif rest.startswith('mlp.up_proj.'):
                kind = rest[len('mlp.up_proj.'):]
                if 'mlp.gate_proj.' + kind in b:
                    if v3:
                        out[p + 'mlp.w2.' + kind] = v
                else:
                    out[p + 'mlp.fc1.' + kind] = v  # plain MLP (DINOv3 naming)
            elif rest.startswith('mlp.down_proj.'):
                kind = rest[len('mlp.down_proj.'):]
                gated = 'mlp.gate_proj.' + kind in b or 'mlp.gate_proj.weight' in b
                out[p + ('mlp.w3.' if gated else 'mlp.fc2.') + kind] = v
            elif rest.startswith(('mlp.fc1.', 'mlp.fc2.')):
                out[p + rest] = v
            else:
                raise LayoutError(f'HF {family}: unexpected key in layer {i}: {rest!r}.')
    if v3:
        dim = out['cls_token'].shape[-1]
        if head_dim is None:
            # Released DINOv3 ViTs use 64-dim heads except the 7B (4096 = 32 x 128).
            head_dim = 128 if dim == 4096 else 64
        out['rope_embed.periods'] = dinov3_rope_periods(head_dim, rope_base)
    return out


# ---------------------------------------------------------------------------- ViT <-> timm
def _vit_official_to_timm(sd: StateDict, family: str) -> StateDict:
    v3 = family == 'dinov3_vit'
    out: StateDict = {}
    has_reg = 'register_tokens' in sd
    for k, v in sd.items():
        if k in ('mask_token', 'rope_embed.periods') or k.endswith('.bias_mask') \
                or k.startswith('local_cls_norm.'):
            continue  # no timm counterpart: pretraining-only or recomputed
        if k.startswith('cls_norm.'):
            raise LayoutError('untied cls_norm has no timm equivalent.')
        if k == 'register_tokens':
            out['reg_token'] = v
        elif k == 'storage_tokens':
            out['reg_token'] = v
        elif k == 'cls_token' and has_reg:
            # timm's reg4 DINOv2 has no class position embedding (no_embed_class=True):
            # fold the official one into the token, which is what the official model adds.
            out['cls_token'] = v + sd['pos_embed'][:, :1]
        elif k == 'pos_embed' and has_reg:
            out['pos_embed'] = v[:, 1:]
        elif v3 and k.endswith('.attn.qkv.bias'):
            q, _, vv = v.chunk(3, dim=0)
            out[k.replace('qkv.bias', 'q_bias')] = q
            out[k.replace('qkv.bias', 'v_bias')] = vv
        elif v3 and re.search(r'\.ls[12]\.gamma$', k):
            out[re.sub(r'\.ls([12])\.gamma$', r'.gamma_\1', k)] = v
        elif '.mlp.w12.' in k:
            out[k.replace('.mlp.w12.', '.mlp.fc1.')] = v
        elif '.mlp.w1.' in k:
            out[k.replace('.mlp.w1.', '.mlp.fc1_g.')] = v
        elif '.mlp.w2.' in k:
            out[k.replace('.mlp.w2.', '.mlp.fc1_x.')] = v
        elif '.mlp.w3.' in k:
            out[k.replace('.mlp.w3.', '.mlp.fc2.')] = v
        else:
            out[k] = v
    return out


def _vit_timm_to_official(sd: StateDict, family: str, head_dim: Optional[int],
                          rope_base: float, qkv_bias: Optional[bool]) -> StateDict:
    v3 = family == 'dinov3_vit'
    out: StateDict = {}
    dim = sd['cls_token'].shape[-1]
    swiglu_fused = any('.mlp.fc1.' in k for k in sd) and any(
        re.search(r'blocks\.\d+\.mlp\.fc1\.weight$', k) and sd[k].shape[0] !=
        sd[k.replace('fc1', 'fc2')].shape[1] for k in sd)
    for k, v in sd.items():
        if k.startswith(('head.', 'fc_norm.')):
            continue
        if k == 'reg_token':
            out['storage_tokens' if v3 else 'register_tokens'] = v
        elif not v3 and k == 'pos_embed' and 'reg_token' in sd:
            # Inverse of the fold above: the class position embedding lives in the token.
            out['pos_embed'] = torch.cat([torch.zeros_like(v[:, :1]), v], dim=1)
        elif v3 and re.search(r'\.gamma_[12]$', k):
            out[re.sub(r'\.gamma_([12])$', r'.ls\1.gamma', k)] = v
        elif v3 and k.endswith(('.attn.q_bias', '.attn.v_bias')):
            continue  # assembled below
        elif '.mlp.fc1_g.' in k:
            out[k.replace('.mlp.fc1_g.', '.mlp.w1.')] = v
        elif '.mlp.fc1_x.' in k:
            out[k.replace('.mlp.fc1_x.', '.mlp.w2.')] = v
        elif swiglu_fused and '.mlp.fc1.' in k:
            out[k.replace('.mlp.fc1.', '.mlp.w12.')] = v
        elif swiglu_fused and '.mlp.fc2.' in k:
            out[k.replace('.mlp.fc2.', '.mlp.w3.')] = v
        elif v3 and '.mlp.fc2.' in k and any('.mlp.fc1_g.' in x for x in sd):
            out[k.replace('.mlp.fc2.', '.mlp.w3.')] = v
        else:
            out[k] = v
    out['mask_token'] = torch.zeros(1, dim, dtype=sd['cls_token'].dtype)
    if v3:
        n = _n_blocks(sd, r'^blocks\.(\d+)\.')
        if qkv_bias is None:
            qkv_bias = dim != 4096
        for i in range(n):
            p = f'blocks.{i}.attn.'
            if p + 'q_bias' in sd:
                q_b, v_b = sd[p + 'q_bias'], sd[p + 'v_bias']
            elif qkv_bias:
                # timm's bias-free DINOv3 variant: the released weights it mirrors have
                # all-zero q/v biases, so zeros reproduce them exactly.
                q_b = v_b = torch.zeros(dim, dtype=sd['cls_token'].dtype)
            else:
                continue
            out[p + 'qkv.bias'] = torch.cat([q_b, torch.zeros_like(q_b), v_b])
            ones = torch.ones_like(q_b)
            out[p + 'qkv.bias_mask'] = torch.cat([ones, torch.zeros_like(q_b), ones])
        if head_dim is None:
            head_dim = 128 if dim == 4096 else 64
        out['rope_embed.periods'] = dinov3_rope_periods(head_dim, rope_base)
    return out


def _fill_local_cls_norm(official: StateDict, wanted: Optional[bool]) -> None:
    """Add the DINOv3 ``local_cls_norm`` that HF / timm files lack, as a copy of ``norm``.

    The official ViT applies ``local_cls_norm`` only in training, to the class + storage
    tokens of the local crops; at eval every token goes through ``norm``. A copy of
    ``norm`` keeps the eval outputs and makes local crops start out normalised exactly
    like global ones. ``wanted=None`` adds it for D = 4096 (the ViT-7B, the one released
    width whose every model has it).
    """
    if 'local_cls_norm.weight' in official or 'norm.weight' not in official:
        return
    if wanted is None:
        wanted = official['cls_token'].shape[-1] == 4096
    if wanted:
        for kind in ('weight', 'bias'):
            if f'norm.{kind}' in official:
                official[f'local_cls_norm.{kind}'] = official[f'norm.{kind}'].clone()


# ---------------------------------------------------------------------------- HF config
def _dinov2_mlp_ratio(dim: int, hidden: int, swiglu: bool) -> int:
    """The (integer: HF's config type) ``mlp_ratio`` from which HF's Dinov2 rebuilds an FFN
    of width ``hidden``."""
    def width(r: int) -> int:
        h = int(dim * r)
        return (int(h * 2 / 3) + 7) // 8 * 8 if swiglu else h

    for r in range(1, 65):
        if width(r) == hidden:
            return r
    raise LayoutError(f'HF Dinov2 has no integer mlp_ratio that gives an FFN width of '
                      f'{hidden} for hidden size {dim} (swiglu={swiglu}): this architecture '
                      f'has no HF transformers config.')


def hf_config_from_state_dict(sd: Mapping[str, torch.Tensor], family: Optional[str] = None,
                              head_dim: Optional[int] = None, rope_base: float = 100.0
                              ) -> Dict[str, Any]:
    """The ``config.json`` fields HF transformers needs to rebuild a DINO ViT.

    ``sd`` is a ViT state dict in any layout. Everything is read from the tensor shapes
    except what weights cannot tell: the head dim (64 in every released DINOv2 / DINOv3
    ViT but the 7B's 128, or ``head_dim``), the norm eps (1e-6 for DINOv2, 1e-5 for
    DINOv3, as released) and the DINOv3 RoPE base (``rope_base``).

    Returns:
        dict: For ``Dinov2Config`` / ``Dinov2WithRegistersConfig`` (model types
        'dinov2' / 'dinov2_with_registers') or ``DINOv3ViTConfig`` ('dinov3_vit'), with
        ``architectures`` set so that ``AutoModel.from_pretrained`` picks the model.
    """
    sd = unchunk_blocks(unwrap_state_dict(sd))
    det_family, layout = detect_layout(sd)
    family = family or det_family
    if family == 'dinov3_convnext':
        raise LayoutError('writing a HF config is only supported for the ViTs.')
    off = sd if layout == 'official' else convert_state_dict(sd, to='official', src=layout,
                                                             family=family, head_dim=head_dim,
                                                             rope_base=rope_base)
    dim = off['cls_token'].shape[-1]
    if head_dim is None:
        head_dim = 128 if dim == 4096 else 64
    if dim % head_dim:
        raise LayoutError(f'hidden size {dim} is not a multiple of the head dim {head_dim}; '
                          f'pass the head dim of this model (--head-dim).')
    patch = off['patch_embed.proj.weight']
    depth = _n_blocks(off, r'^blocks\.(\d+)\.')
    has = lambda key: f'blocks.0.{key}' in off  # noqa: E731
    common = dict(hidden_size=int(dim), num_hidden_layers=int(depth),
                  num_attention_heads=int(dim // head_dim), patch_size=int(patch.shape[-1]),
                  num_channels=int(patch.shape[1]))
    if family == 'dinov2_vit':
        swiglu = has('mlp.w12.weight')
        hidden = (off['blocks.0.mlp.w12.weight'].shape[0] // 2 if swiglu
                  else off['blocks.0.mlp.fc1.weight'].shape[0])
        grid = int(round((off['pos_embed'].shape[1] - 1) ** 0.5))
        reg = 'register_tokens' in off
        cfg = dict(common, mlp_ratio=_dinov2_mlp_ratio(dim, int(hidden), swiglu),
                   hidden_act='gelu', layer_norm_eps=1e-6, image_size=grid * common['patch_size'],
                   qkv_bias=has('attn.qkv.bias'), layerscale_value=1.0,
                   use_swiglu_ffn=swiglu)
        if reg:
            cfg.update(model_type='dinov2_with_registers',
                       architectures=['Dinov2WithRegistersModel'],
                       num_register_tokens=int(off['register_tokens'].shape[1]))
        else:
            cfg.update(model_type='dinov2', architectures=['Dinov2Model'])
        return cfg
    gated = has('mlp.w1.weight')
    hidden = off['blocks.0.mlp.w1.weight' if gated else 'blocks.0.mlp.fc1.weight'].shape[0]
    qkv_bias = has('attn.qkv.bias')
    n_storage = off['storage_tokens'].shape[1] if 'storage_tokens' in off else 0
    return dict(common, model_type='dinov3_vit', architectures=['DINOv3ViTModel'],
                intermediate_size=int(hidden), hidden_act='silu' if gated else 'gelu',
                use_gated_mlp=gated, layer_norm_eps=1e-5, rope_theta=float(rope_base),
                image_size=224, query_bias=qkv_bias, key_bias=False, value_bias=qkv_bias,
                proj_bias=has('attn.proj.bias'),
                mlp_bias=has('mlp.w1.bias' if gated else 'mlp.fc1.bias'),
                layerscale_value=1.0, num_register_tokens=int(n_storage),
                pos_embed_rescale=2.0)


# ---------------------------------------------------------------------------- public API
def convert_state_dict(sd: Mapping, to: str = 'official', src: str = 'auto',
                       family: Optional[str] = None, head_dim: Optional[int] = None,
                       rope_base: float = 100.0, qkv_bias: Optional[bool] = None,
                       local_cls_norm: Optional[bool] = None) -> StateDict:
    """Convert a DINOv2/DINOv3 backbone state dict between layouts.

    Args:
        sd (Mapping): The state dict (or a checkpoint wrapping it under ``state_dict`` /
            ``model``; a ``module.`` prefix is stripped; chunked blocks are flattened).
        to (str): Target layout: ``'official'``, ``'hf'`` or ``'timm'``.
        src (str): Source layout, or ``'auto'`` to detect it. Defaults to ``'auto'``.
        family (str, optional): ``'dinov2_vit'``, ``'dinov3_vit'`` or ``'dinov3_convnext'``;
            detected when None.
        head_dim (int, optional): DINOv3 attention head dim, needed to rebuild the RoPE
            periods that HF/timm files do not store. Defaults to 64 (128 when D = 4096).
        rope_base (float): DINOv3 RoPE base. Defaults to 100.
        qkv_bias (bool, optional): For timm DINOv3 files without q/v biases: emit zero
            biases (True, fits the released non-7B archs) or none (False). Defaults to
            ``D != 4096``.
        local_cls_norm (bool, optional): For DINOv3 ViT files in the HF / timm layout
            converted to the official one: add ``local_cls_norm.{weight,bias}`` (which
            those layouts do not store) as a copy of ``norm.{weight,bias}`` (True), or
            not (False). Needed by models built with
            ``untie_global_and_local_cls_norm=True``; the official code only uses this
            norm in training, so eval outputs do not depend on it. Defaults to
            ``D == 4096`` (the ViT-7B; pass True for the SAT-493M ViT-L).

    Returns:
        dict: A new state dict in the target layout (tensors are shared, not copied,
        where no arithmetic was needed).
    """
    if to not in LAYOUTS:
        raise LayoutError(f'unknown target layout {to!r}; choose one of {LAYOUTS}.')
    if src not in LAYOUTS + ('auto',):
        raise LayoutError(f"unknown source layout {src!r}; choose one of {LAYOUTS + ('auto',)}.")
    if family is not None and family not in FAMILIES:
        raise LayoutError(f'unknown family {family!r}; choose one of {FAMILIES}.')
    if local_cls_norm not in (None, True, False):
        raise LayoutError(f'local_cls_norm must be None, True or False; got {local_cls_norm!r}.')
    sd = unchunk_blocks(unwrap_state_dict(sd))
    det_family, det_layout = detect_layout(sd)
    if src == 'auto':
        src = det_layout
    elif src != det_layout:
        raise LayoutError(f"--from {src!r} was given but the keys look like the {det_layout!r} "
                          f'layout of {det_family}; fix --from or use auto.')
    if family is None:
        family = det_family
    elif family != det_family and not {family, det_family} <= {'dinov2_vit', 'dinov3_vit'}:
        raise LayoutError(f'family {family!r} was given but the keys look like {det_family}.')
    if local_cls_norm and family != 'dinov3_vit':
        raise LayoutError(f'local_cls_norm only exists in DINOv3 ViTs; this is {family}: drop '
                          f'the local_cls_norm option (--local-cls-norm).')
    if src == to:
        return dict(sd)

    if family == 'dinov3_convnext':
        official = sd if src == 'official' else _convnext_to_official(sd, src)
        return official if to == 'official' else _convnext_official_to(official, to)

    if src == 'official':
        official = sd
    elif src == 'hf':
        official = _vit_hf_to_official(sd, family, head_dim, rope_base)
    else:
        official = _vit_timm_to_official(sd, family, head_dim, rope_base, qkv_bias)
    if src != 'official' and family == 'dinov3_vit':
        _fill_local_cls_norm(official, local_cls_norm)
    if to == 'official':
        return official
    if to == 'hf':
        return _vit_official_to_hf(official, family)
    return _vit_official_to_timm(official, family)


# ---------------------------------------------------------------------------- file I/O
_HF_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')


def read_checkpoint(path: str) -> Tuple[Any, Dict[str, Any]]:
    """Read a checkpoint object from a ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` file
    or a HF model directory (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``), without unwrapping it.

    Torch files go through :func:`dino_mm.engine.checkpoint.safe_torch_load` (the safe
    unpickler, with its messages for truncated or unsafe files).

    Returns:
        tuple: ``(checkpoint, hf_config)``; ``hf_config`` is the directory's
        ``config.json`` (empty for plain files).
    """
    path = os.path.expanduser(os.fspath(path))
    config: Dict[str, Any] = {}
    if os.path.isdir(path):
        cfg_path = os.path.join(path, 'config.json')
        if os.path.isfile(cfg_path):
            with open(cfg_path) as f:
                config = json.load(f)
        found = [os.path.join(path, n) for n in _HF_WEIGHT_FILES
                 if os.path.isfile(os.path.join(path, n))]
        if not found:
            from dino_mm.engine.checkpoint import (CheckpointError,
                                                   describe_checkpoint_directory,
                                                   is_sharded_checkpoint)
            if is_sharded_checkpoint(path, complete=False) or not config:  # not a HF folder
                raise CheckpointError(describe_checkpoint_directory(path))
            raise FileNotFoundError(f'{path} is a directory but holds none of '
                                    f'{_HF_WEIGHT_FILES} (sharded HF checkpoints are not '
                                    f'supported; merge them first).')
        path = found[0]
    # Missing and empty files: one message for every loader (engine/checkpoint.py).
    from dino_mm.engine.checkpoint import check_checkpoint_file
    path = check_checkpoint_file(path)
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        try:
            tensors = dict(load_file(path))
            from safetensors import safe_open
            with safe_open(path, framework='pt') as f:
                meta = f.metadata() or {}
        except Exception as err:  # safetensors raises its own error types
            raise LayoutError(f'cannot read {path!r} as a safetensors file: '
                              f'{str(err).splitlines()[0]}.') from err
        if ARCH_KEY in meta:
            try:
                record = json.loads(meta[ARCH_KEY])
            except ValueError as err:
                raise LayoutError(f'{path}: metadata {ARCH_KEY!r} is not JSON: {err}') from err
            return {'state_dict': tensors, ARCH_KEY: record}, config
        try:
            return tensors, config
        except Exception as err:  # safetensors raises its own error types
            raise LayoutError(f'cannot read {path!r} as a safetensors file: '
                              f'{str(err).splitlines()[0]}.') from err
    # Imported here: the engine pulls in MMEngine, which the converters do not need.
    from dino_mm.engine.checkpoint import safe_torch_load
    return safe_torch_load(path, map_location='cpu'), config


def load_state_dict_file(path: str) -> Tuple[StateDict, Dict[str, Any]]:
    """Read a backbone state dict from a ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors``
    file or a HF model directory (see :func:`read_checkpoint`).

    Returns:
        tuple: ``(state_dict, hf_config)``; ``hf_config`` is the directory's
        ``config.json`` (empty for plain files).
    """
    obj, config = read_checkpoint(path)
    return unwrap_state_dict(obj), config


def save_state_dict_file(sd: Mapping[str, torch.Tensor], path: str,
                         arch: Optional[Mapping[str, Any]] = None) -> str:
    """Write ``sd`` atomically (:func:`dino_mm.engine.checkpoint.atomic_write`).

    With ``arch`` (an architecture record, see :data:`ARCH_KEY`) a ``.pth`` file holds
    ``{'state_dict': sd, 'dino_mm_arch': arch}`` and a ``.safetensors`` file stores the
    record as JSON metadata; every dino_mm loader reads both.

    ``.safetensors`` paths (or an existing directory, which receives
    ``model.safetensors``) are written with safetensors, anything else with ``torch.save``.
    Tensors are made contiguous and un-aliased (safetensors refuses shared storage, e.g.
    the ConvNeXt ``norms.3`` alias). Returns the path written.
    """
    path = os.path.expanduser(str(path))
    if os.path.isdir(path):
        path = os.path.join(path, 'model.safetensors')
    plain = {k: v.detach().clone().contiguous() for k, v in sd.items()}
    from dino_mm.engine.checkpoint import atomic_write, atomic_write_bytes, torch_save_bytes
    if path.endswith('.safetensors'):
        from safetensors.torch import save_file
        metadata = {'format': 'pt'}
        if arch is not None:
            metadata[ARCH_KEY] = json.dumps(dict(arch))
        atomic_write(path, lambda tmp: save_file(plain, tmp, metadata=metadata))
    else:
        atomic_write_bytes(torch_save_bytes(
            plain if arch is None else {'state_dict': plain, ARCH_KEY: dict(arch)}), path)
    return path
