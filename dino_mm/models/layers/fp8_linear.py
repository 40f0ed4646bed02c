"""fp8 matrix products in the backbone blocks, as the official DINOv3 ``fp8_enabled``.

The official DINOv3 trainer can run the linear layers of its transformer blocks with
float8 (e4m3) operands: each row of the activation and each row of the weight is scaled by
its absolute maximum onto the e4m3 range (448), the product of the two fp8 matrices runs
with unit scales and the row scales are applied to the bf16 result afterwards. In the
backward pass the input gradient is again an fp8 product (output gradient scaled by rows,
the weight by one tensor-wide maximum) and the weight gradient a high-precision product.

Why hand-written: no well-kept library offers exactly this recipe (torchao's float8
training uses tensor-wise or axis-wise scales with delayed / dynamic scaling and different
backward precisions), and the released recipes were trained with this one. The layers keep
their class's parameters and buffers (the module's class is switched in place), so
checkpoints, FSDP units and layer-wise decay see the same names. ``torch._scaled_mm`` runs
on CUDA GPUs with fp8 tensor cores (H100 and newer) and, slowly, on CPU, which is what the
tests use.
"""
import re
from typing import List, Optional

import torch
from torch import nn

from .attention import LinearKMaskedBias

__all__ = ['FP8Linear', 'FP8LinearKMaskedBias', 'convert_linears_to_fp8', 'fp8_linear',
           'fp8_matmul']

E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max
_EPS = 1e-12  # a zero row gets scale 1e-12 / 448 instead of a division by zero


def _to_e4m3(t: torch.Tensor, amax: torch.Tensor):
    """``t`` divided by ``amax / 448`` (broadcast), cast to e4m3; and that scale."""
    scale = amax.float().clamp(min=_EPS) / E4M3_MAX
    return (t.float() / scale).to(torch.float8_e4m3fn), scale


def fp8_matmul(a: torch.Tensor, a_amax: torch.Tensor, b: torch.Tensor,
               b_amax: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` with both operands in e4m3, scaled by ``a_amax`` (``(M, 1)``) and
    ``b_amax`` (``(N, 1)``); the bf16 result is rescaled after the product."""
    a8, a_scale = _to_e4m3(a, a_amax)
    b8, b_scale = _to_e4m3(b.contiguous(), b_amax)
    one = torch.ones((1, 1), dtype=torch.float32, device=a.device)
    out = torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    return (out * a_scale * b_scale.t()).to(torch.bfloat16)


class _FP8LinearFunction(torch.autograd.Function):
    """``x @ w.T + bias`` with fp8 products in forward and for the input gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
        out = fp8_matmul(x, x.detach().abs().amax(dim=-1, keepdim=True), weight,
                         weight.detach().abs().amax(dim=-1, keepdim=True))
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out + bias if bias is not None else out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            w_t = weight.t()
            w_amax = weight.detach().abs().amax().expand(w_t.shape[0], 1)  # one scale
            grad_x = fp8_matmul(grad_out, grad_out.abs().amax(dim=-1, keepdim=True), w_t,
                                w_amax).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (grad_out.t().to(x.dtype) @ x).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=0)
        return grad_x, grad_w, grad_b


def fp8_linear(x: torch.Tensor, weight: torch.Tensor,
               bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`torch.nn.functional.linear` with fp8 products (any leading dims); bf16 out."""
    out = _FP8LinearFunction.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return out.reshape(*x.shape[:-1], out.shape[-1])


class FP8Linear(nn.Linear):
    """An ``nn.Linear`` whose products run in fp8 (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.bias)


class FP8LinearKMaskedBias(LinearKMaskedBias):
    """:class:`LinearKMaskedBias` (zero key bias) with fp8 products."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.bias_mask if self.bias is not None else None
        return fp8_linear(x, self.weight, bias)


_FP8_CLASSES = {nn.Linear: FP8Linear, LinearKMaskedBias: FP8LinearKMaskedBias}


def convert_linears_to_fp8(module: nn.Module, filter: str = 'blocks') -> List[str]:
    """Switch, in place, every linear layer whose name matches ``filter`` to fp8 products.

    Official ``fp8_filter`` (a regular expression searched in the module path; the
    recipes use ``'blocks'``: every linear layer of the transformer blocks). Parameters,
    buffers and names are unchanged.

    Returns:
        list[str]: The converted module names.

    Raises:
        ValueError: No linear layer matches, or one has a dimension that is not a multiple
            of 64 (fp8 tensor cores work on 64-wide tiles; the official code refuses too).
    """
    pattern = re.compile(filter)
    converted = []
    for name, sub in module.named_modules():
        if type(sub) not in _FP8_CLASSES or not pattern.search(name):
            continue
        if sub.in_features % 64 or sub.out_features % 64:
            raise ValueError(
                f'fp8: {name} is {sub.in_features} -> {sub.out_features}; fp8 products need '
                'every dimension of the converted layers to be a multiple of 64 (use a '
                'width / FFN size that is, e.g. ffn_layer=swiglu64, or narrow fp8_filter).')
        converted.append(name)
    if not converted:
        raise ValueError(f'fp8: no nn.Linear in {type(module).__name__} matches fp8_filter='
                         f'{filter!r}; the recipes use "blocks".')
    for name in converted:
        sub = module.get_submodule(name)
        sub.__class__ = _FP8_CLASSES[type(sub)]
    return converted
