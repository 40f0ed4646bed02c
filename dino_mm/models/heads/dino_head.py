"""DINO / iBOT projection head (docs/reference.md §3.3, §4.1)."""
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.init import trunc_normal_

from dino_mm.registry import MODELS


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight ``g * v / ||v||`` (row-wise norm).

    Written by hand rather than with ``torch.nn.utils.parametrizations.weight_norm`` because that
    API stores ``parametrizations.weight.original0/1`` while official DINOv2 checkpoints hold
    ``weight_g`` / ``weight_v``; the legacy ``torch.nn.utils.weight_norm`` is deprecated and
    its non-leaf ``weight`` attribute breaks ``copy.deepcopy``.

    Args:
        in_features (int): Input size.
        out_features (int): Output size (number of prototypes).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        # Plain nn.Linear initialisation for the direction, like wrapping a fresh nn.Linear.
        direction = nn.Linear(in_features, out_features, bias=False).weight.detach()
        # The official head overwrites g with ones right after wrapping; g is registered first
        # so the state-dict order matches official checkpoints.
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        self.weight_v = nn.Parameter(direction.clone())

    @property
    def weight(self) -> torch.Tensor:
        """Effective weight (out_features, in_features)."""
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f'in_features={self.in_features}, out_features={self.out_features}'


def _build_mlp(nlayers: int, in_dim: int, bottleneck_dim: int, hidden_dim: int, use_bn: bool,
               bias: bool) -> nn.Module:
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim, bias=bias)
    layers = []
    dims = [in_dim] + [hidden_dim] * (nlayers - 1)
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers.append(nn.Linear(d_in, d_out, bias=bias))
        if use_bn:
            layers.append(nn.BatchNorm1d(d_out))
        layers.append(nn.GELU())
    layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=bias))
    return nn.Sequential(*layers)


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@MODELS.register_module()
class DINOHead(nn.Module):
    """MLP -> L2 normalisation -> prototype layer.

    State-dict keys match the official heads: ``mlp.{0,2,4}.*`` and ``last_layer.weight_g`` /
    ``last_layer.weight_v`` (DINOv2, ``weight_norm_last_layer=True``) or ``last_layer.weight``
    (DINOv3, plain linear).

    Args:
        in_dim (int): Backbone embedding size.
        out_dim (int): Number of prototypes ``K``.
        use_bn (bool): BatchNorm1d after hidden linears. Defaults to False.
        nlayers (int): Linear layers in the MLP (values < 1 count as 1). Defaults to 3.
        hidden_dim (int): Hidden width. Defaults to 2048.
        bottleneck_dim (int): Output width of the MLP. Defaults to 256.
        mlp_bias (bool): Biases in the MLP linears. Defaults to True.
        weight_norm_last_layer (bool): DINOv2 weight-normalised prototypes (True) or a plain
            linear layer as in DINOv3 (False). Defaults to True.
    """

    def __init__(self,
                 in_dim: int,
                 out_dim: int,
                 use_bn: bool = False,
                 nlayers: int = 3,
                 hidden_dim: int = 2048,
                 bottleneck_dim: int = 256,
                 mlp_bias: bool = True,
                 weight_norm_last_layer: bool = True) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        self.mlp = _build_mlp(nlayers, in_dim, bottleneck_dim, hidden_dim, use_bn, mlp_bias)
        # Same RNG order as the official head (MLP, its init, then the last layer), so equal
        # seeds give equal weights.
        self.mlp.apply(_init_linear)
        if weight_norm_last_layer:
            self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        else:
            self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
            # DINOv3 initialises every linear of the head, prototypes included.
            _init_linear(self.last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x (torch.Tensor): (..., in_dim) features.

        Returns:
            torch.Tensor: (..., out_dim) prototype logits.
        """
        return self.last_layer(self.project(x))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """MLP and L2 normalisation: the (..., bottleneck_dim) input of ``last_layer``.

        Rank-partitioned multi-distillation exchanges these between ranks instead of the
        ``out_dim``-wide logits (official ``no_last_layer`` / ``only_last_layer``).
        """
        x = self.mlp(x)
        # 1e-12 underflows in fp16.
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        return F.normalize(x, dim=-1, p=2, eps=eps)
