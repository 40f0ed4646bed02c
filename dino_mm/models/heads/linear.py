"""Linear classifier heads on frozen DINO features (the official ``*_lc`` models).

The official ImageNet heads are a single ``nn.Linear`` whose state dict (``weight``,
``bias``) is stored on its own; the backbone is loaded from its own file. The input of
the head is built from the backbone outputs as in docs/reference.md §2.4:

* ``layers=1``: ``cat(cls, mean(patch))`` from ``forward_features`` -> ``2 * D``;
* ``layers=4``: ``cat(cls_{L-4}, ..., cls_{L-1}, mean(patch_{L-1}))`` from
  ``get_intermediate_layers(n=4, return_class_token=True, norm=True)`` -> ``5 * D``.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from dino_mm.registry import MODELS

IntermediateOutput = Sequence[Tuple[torch.Tensor, torch.Tensor]]


def create_linear_input(x_tokens_list: IntermediateOutput, use_n_blocks: int,
                        use_avgpool: bool) -> torch.Tensor:
    """Build a linear-probe input from ``get_intermediate_layers`` outputs.

    Args:
        x_tokens_list (sequence of (Tensor, Tensor)): ``(patch_tokens, cls_token)`` per
            block, ordered by block index, as returned by
            ``get_intermediate_layers(..., return_class_token=True)``; patch tokens are
            ``(B, P, D)``, class tokens ``(B, D)``.
        use_n_blocks (int): How many of the last blocks contribute their class token.
        use_avgpool (bool): Whether to append the mean of the last block's patch tokens.

    Returns:
        Tensor: ``(B, (use_n_blocks + use_avgpool) * D)`` in float32 (the official
        probes cast to float so fp16-autocast features train in fp32).
    """
    if use_n_blocks < 1 or use_n_blocks > len(x_tokens_list):
        raise ValueError(f'use_n_blocks={use_n_blocks} must be in [1, {len(x_tokens_list)}] '
                         f'(number of intermediate outputs given)')
    intermediate = x_tokens_list[-use_n_blocks:]
    output = torch.cat([cls for _, cls in intermediate], dim=-1)
    if use_avgpool:
        patch_mean = torch.mean(intermediate[-1][0], dim=1)
        output = torch.cat((output, patch_mean), dim=-1)
    return output.reshape(output.shape[0], -1).float()


@MODELS.register_module()
class DinoLinearClassifier(nn.Module):
    """A frozen DINO backbone followed by the official ImageNet linear head.

    ``linear_head`` is a plain ``nn.Linear`` so that an official head file
    (``{name}_linear_head.pth`` / ``{name}_linear4_head.pth``) loads into it with
    ``strict=True`` and unchanged key names (``weight``, ``bias``).

    Args:
        backbone (nn.Module | dict): The backbone or its config
            (e.g. ``dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vits14')``).
            It must provide ``embed_dim``, ``forward_features`` and
            ``get_intermediate_layers``.
        layers (int): 1 (``cat(cls, mean(patch))``) or 4 (last four class tokens plus
            the last patch mean). Defaults to 4.
        num_classes (int): Number of classes. Defaults to 1000.
        embed_dim (int, optional): Feature width D; read from ``backbone.embed_dim``
            when None.
    """

    def __init__(self,
                 backbone: Union[nn.Module, dict],
                 layers: int = 4,
                 num_classes: int = 1000,
                 embed_dim: Optional[int] = None) -> None:
        super().__init__()
        if layers not in (1, 4):
            raise ValueError(f'layers must be 1 or 4 (official heads), got {layers!r}')
        if isinstance(backbone, dict):
            backbone = MODELS.build(backbone)
        self.backbone = backbone
        if embed_dim is None:
            embed_dim = getattr(backbone, 'embed_dim', None)
            if embed_dim is None:
                raise ValueError(f'{type(backbone).__name__} has no `embed_dim`; pass '
                                 'embed_dim=D to DinoLinearClassifier')
        self.layers = layers
        self.embed_dim = int(embed_dim)
        self.linear_head = nn.Linear((1 + layers) * self.embed_dim, num_classes)

    def extract_linear_input(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the head input ``(B, (1 + layers) * D)`` for images ``x``."""
        if self.layers == 1:
            feats = self.backbone.forward_features(x)
            cls_token = feats['x_norm_clstoken']
            patch_tokens = feats['x_norm_patchtokens']
            return torch.cat([cls_token, patch_tokens.mean(dim=1)], dim=1)
        # Keyword ``n`` because the DINOv3 signature makes it keyword-only.
        outs = self.backbone.get_intermediate_layers(
            x, n=self.layers, return_class_token=True, norm=True)
        return torch.cat([cls for _, cls in outs] + [outs[-1][0].mean(dim=1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits ``(B, num_classes)``."""
        return self.linear_head(self.extract_linear_input(x))

    def load_head(self, path: str, strict: bool = True) -> None:
        """Load an official head file (a state dict with ``weight`` / ``bias``).

        Args:
            path (str): Local path of the ``*_linear*_head.pth`` file.
            strict (bool): Passed to ``load_state_dict``. Defaults to True.
        """
        # The shared safe reader (.pth with the safe unpickler, or .safetensors), with
        # its messages for missing, empty, truncated and unsafe files.
        from dino_mm.models.converters import read_checkpoint
        state_dict = read_checkpoint(path)[0]
        if isinstance(state_dict, dict) and 'state_dict' in state_dict:
            state_dict = state_dict['state_dict']
        if not isinstance(state_dict, dict):
            raise TypeError(f'{path}: expected a head state dict (weight, bias), got '
                            f'{type(state_dict).__name__}; is this a linear head file?')
        expected = tuple(self.linear_head.weight.shape)
        got = tuple(state_dict['weight'].shape) if 'weight' in state_dict else None
        if got is not None and got != expected:
            raise ValueError(
                f'{path}: head weight has shape {got}, but layers={self.layers} with '
                f'embed_dim={self.embed_dim} needs {expected}; check the `layers` argument '
                '(linear_head.pth is layers=1, linear4_head.pth is layers=4)')
        self.linear_head.load_state_dict(state_dict, strict=strict)


__all__ = ['create_linear_input', 'DinoLinearClassifier']
