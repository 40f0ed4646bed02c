"""The two towers of dino.txt: a frozen DINO backbone + trainable head, and the text side.

Official key layout (``visual_model.`` / ``text_model.`` in a released file):

* ``visual_model.head.{blocks|block_list}.{i}.*`` -- DINOv3 names the head blocks
  ``blocks``, the DINOv2 release ``block_list``; each is a pre-norm ViT block (``norm1``,
  ``attn.qkv`` without bias, ``attn.proj``, ``ls1.gamma``, ``norm2``, SwiGLU ``mlp.w1`` /
  ``w2`` / ``w3`` aligned to 64, ``ls2.gamma``); then ``visual_model.head.ln_final`` and,
  when the widths need it, ``visual_model.head.linear_projection.weight`` (no bias).
* ``text_model.backbone.*`` (:class:`~.text_transformer.TextTransformer`) and
  ``text_model.head.linear_projection.weight`` (plus head blocks when configured).
"""
from typing import Optional, Tuple

import torch
from torch import nn

from ..layers.block import Block
from ..layers.layer_scale import LayerScale
from .text_transformer import CausalSelfAttentionBlock

__all__ = ['VisionHead', 'VisionTower', 'TextHead', 'TextTower', 'HEAD_BLOCK_NAMES']

# Name of the head's block list in the official releases.
HEAD_BLOCK_NAMES = {'dinov3': 'blocks', 'dinov2': 'block_list'}


def _init_vit_block(module: nn.Module) -> None:
    """timm's ViT init (truncated normal 0.02 linears, unit norms), as both releases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, LayerScale)):
            m.reset_parameters()


def _projection(in_dim: int, out_dim: int, needed: bool) -> nn.Module:
    return nn.Linear(in_dim, out_dim, bias=False) if needed else nn.Identity()


def _init_projection(proj: nn.Module) -> None:
    if isinstance(proj, nn.Linear):
        nn.init.normal_(proj.weight, std=proj.in_features ** -0.5)


class _FrozenBackboneTower(nn.Module):
    """A tower whose ``backbone`` may be frozen: no gradients, and eval mode (dropout,
    stochastic depth off) even while the rest of the model trains."""

    backbone: nn.Module
    freeze_backbone: bool

    def _freeze(self) -> None:
        if self.freeze_backbone:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self


class VisionHead(nn.Module):
    """Trainable blocks on the backbone tokens, a LayerNorm, an optional projection.

    Args:
        input_dim (int): Backbone width.
        embed_dim (int): Joint embedding width (class and pooled patch halves together).
        num_heads (int): Heads of the head blocks (the backbone's).
        num_blocks (int): Head blocks; 0 keeps an identity and no LayerNorm.
        drop_path (float): Stochastic depth of the head blocks (batch-subset scheme).
        use_class_token (bool): The embedding has a class-token part.
        use_patch_tokens (bool): The embedding has a pooled-patch part.
        use_linear_projection (bool): Force the projection even when widths match.
        block_list_name (str): 'blocks' (DINOv3 release) or 'block_list' (DINOv2).
    """

    def __init__(self, input_dim: int, embed_dim: int, num_heads: int, num_blocks: int,
                 drop_path: float, use_class_token: bool, use_patch_tokens: bool,
                 use_linear_projection: bool, block_list_name: str = 'blocks') -> None:
        super().__init__()
        if block_list_name not in HEAD_BLOCK_NAMES.values():
            raise ValueError(f'block_list_name must be one of {sorted(HEAD_BLOCK_NAMES.values())}, '
                             f'got {block_list_name!r}')
        if not (use_class_token or use_patch_tokens):
            raise ValueError('the image embedding needs the class token, the patch tokens or both')
        blocks = [Block(input_dim, num_heads, qkv_bias=False, init_values=1e-5,
                        drop_path=drop_path, norm_layer=nn.LayerNorm, ffn_layer='swiglu64',
                        drop_path_mode='v3') for _ in range(num_blocks)] or [nn.Identity()]
        self.block_list_name = block_list_name
        self.num_blocks = num_blocks
        setattr(self, block_list_name, nn.ModuleList(blocks))
        self.ln_final = nn.LayerNorm(input_dim) if num_blocks > 0 else nn.Identity()
        parts = 2 if use_class_token and use_patch_tokens else 1
        if embed_dim % parts:
            raise ValueError(f'embed_dim={embed_dim} must be divisible by {parts} (one part for '
                             'the class token, one for the pooled patches)')
        self.linear_projection = _projection(
            input_dim, embed_dim // parts, use_linear_projection or parts * input_dim != embed_dim)

    @property
    def blocks_list(self) -> nn.ModuleList:
        return getattr(self, self.block_list_name)

    def init_weights(self) -> None:
        if self.num_blocks:
            for block in self.blocks_list:
                _init_vit_block(block)
            self.ln_final.reset_parameters()
        _init_projection(self.linear_projection)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for block in self.blocks_list:
            tokens = block(tokens)
        return self.linear_projection(self.ln_final(tokens))


class VisionTower(_FrozenBackboneTower):
    """Frozen DINO backbone + :class:`VisionHead`; embedding = [class, pooled patches].

    The head runs on ``[class token of the last block, register tokens and patch tokens of
    the ``patch_token_layer``-th last block]`` (both normalised by the backbone's final
    norm), as the official tower does.

    Args:
        backbone (nn.Module): A :class:`~dino_mm.models.backbones.DinoVisionTransformer`.
        embed_dim (int): Joint embedding width.
        freeze_backbone (bool): Keep the backbone frozen and in eval mode. Defaults to True.
        num_head_blocks (int): Head blocks. Defaults to 2.
        head_drop_path (float): Head stochastic depth. Defaults to 0.3.
        use_class_token (bool): Defaults to True.
        use_patch_tokens (bool): Defaults to True.
        patch_token_layer (int): 1 = last block, 2 = second to last... Defaults to 1.
        patch_pooler (str): 'mean', 'max' or 'gem' (cubic generalised mean). Defaults to
            'mean'.
        use_linear_projection (bool): Defaults to False.
        block_list_name (str): See :class:`VisionHead`. Defaults to 'blocks'.
    """

    POOLERS = ('mean', 'max', 'gem')

    def __init__(self, backbone: nn.Module, embed_dim: int, freeze_backbone: bool = True,
                 num_head_blocks: int = 2, head_drop_path: float = 0.3,
                 use_class_token: bool = True, use_patch_tokens: bool = True,
                 patch_token_layer: int = 1, patch_pooler: str = 'mean',
                 use_linear_projection: bool = False, block_list_name: str = 'blocks') -> None:
        super().__init__()
        if patch_pooler not in self.POOLERS:
            raise ValueError(f'patch_pooler must be one of {self.POOLERS}, got {patch_pooler!r}')
        self.backbone = backbone
        self.freeze_backbone = freeze_backbone
        self.use_class_token, self.use_patch_tokens = use_class_token, use_patch_tokens
        self.patch_token_layer, self.patch_pooler = patch_token_layer, patch_pooler
        self.num_register_tokens = int(getattr(backbone, 'num_register_tokens', 0))
        self.head = VisionHead(backbone.embed_dim, embed_dim, backbone.num_heads,
                               num_head_blocks, head_drop_path, use_class_token,
                               use_patch_tokens, use_linear_projection, block_list_name)
        self._freeze()

    def init_weights(self) -> None:
        self.head.init_weights()

    def backbone_features(self, images: torch.Tensor
                          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(class token, patch tokens, register tokens) of the backbone."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            out = self.backbone.get_intermediate_layers(
                images, n=self.patch_token_layer, return_class_token=True,
                return_extra_tokens=True)
        return out[-1][1], out[0][0], out[0][2]

    def class_and_patch_tokens(self, images: torch.Tensor
                               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(head class token, head patch tokens, backbone patch tokens)."""
        cls, patches, registers = self.backbone_features(images)
        tokens = self.head(torch.cat([cls.unsqueeze(1), registers, patches], dim=1))
        return tokens[:, 0], tokens[:, 1 + self.num_register_tokens:], patches

    def pool(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        if self.patch_pooler == 'mean':
            return patch_tokens.mean(dim=1)
        if self.patch_pooler == 'max':
            return patch_tokens.max(dim=1).values
        return patch_tokens.clamp(min=1e-6).pow(3).mean(dim=1).pow(1 / 3)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image embedding, head patch tokens, backbone patch tokens)."""
        cls, patches, backbone_patches = self.class_and_patch_tokens(images)
        parts = ([cls] if self.use_class_token else []) + (
            [self.pool(patches)] if self.use_patch_tokens else [])
        return torch.cat(parts, dim=-1), patches, backbone_patches


class TextHead(nn.Module):
    """Optional blocks, LayerNorm and projection on the text backbone's tokens.

    Args:
        input_dim (int): Text backbone width.
        embed_dim (int): Joint embedding width.
        num_heads (int): Heads of the head blocks.
        num_blocks (int): Head blocks (0 in the releases).
        drop_prob (float): Dropout of the head blocks.
        is_causal (bool): Causal head blocks.
        use_linear_projection (bool): Force the projection even when widths match.
        block_list_name (str): 'blocks' or 'block_list'.
    """

    def __init__(self, input_dim: int, embed_dim: int, num_heads: int, num_blocks: int,
                 drop_prob: float, is_causal: bool, use_linear_projection: bool,
                 block_list_name: str = 'blocks') -> None:
        super().__init__()
        blocks = [CausalSelfAttentionBlock(input_dim, num_heads, is_causal=is_causal,
                                           dropout_prob=drop_prob)
                  for _ in range(num_blocks)] or [nn.Identity()]
        self.block_list_name, self.num_blocks = block_list_name, num_blocks
        setattr(self, block_list_name, nn.ModuleList(blocks))
        self.ln_final = nn.LayerNorm(input_dim) if num_blocks > 0 else nn.Identity()
        self.linear_projection = _projection(input_dim, embed_dim,
                                             use_linear_projection or input_dim != embed_dim)

    def init_weights(self) -> None:
        if self.num_blocks:
            for block in getattr(self, self.block_list_name):
                block.init_weights()
            self.ln_final.reset_parameters()
        _init_projection(self.linear_projection)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for block in getattr(self, self.block_list_name):
            tokens = block(tokens)
        return self.linear_projection(self.ln_final(tokens))


class TextTower(_FrozenBackboneTower):
    """Text backbone + :class:`TextHead`, pooled to one embedding per text.

    Args:
        backbone (nn.Module): A :class:`~.text_transformer.TextTransformer`.
        embed_dim (int): Joint embedding width.
        freeze_backbone (bool): Defaults to False (the releases train it).
        num_head_blocks (int): Defaults to 0.
        head_is_causal (bool): Defaults to False.
        head_drop_prob (float): Defaults to 0.
        pooler (str): 'argmax' (the token with the largest id: the end-of-text token,
            CLIP's pooling), 'first' or 'last'. Defaults to 'argmax'.
        use_linear_projection (bool): Defaults to True.
        block_list_name (str): Defaults to 'blocks'.
    """

    POOLERS = ('argmax', 'first', 'last')

    def __init__(self, backbone: nn.Module, embed_dim: int, freeze_backbone: bool = False,
                 num_head_blocks: int = 0, head_is_causal: bool = False,
                 head_drop_prob: float = 0.0, pooler: str = 'argmax',
                 use_linear_projection: bool = True, block_list_name: str = 'blocks') -> None:
        super().__init__()
        if pooler not in self.POOLERS:
            raise ValueError(f'text pooler must be one of {self.POOLERS}, got {pooler!r}')
        self.backbone, self.freeze_backbone, self.pooler = backbone, freeze_backbone, pooler
        self.head = TextHead(backbone.embed_dim, embed_dim, backbone.num_heads, num_head_blocks,
                             head_drop_prob, head_is_causal, use_linear_projection,
                             block_list_name)
        self._freeze()

    def init_weights(self) -> None:
        if not self.freeze_backbone:
            self.backbone.init_weights()
        self.head.init_weights()

    def forward(self, token_indices: torch.Tensor) -> torch.Tensor:
        tokens = self.head(self.backbone(token_indices))
        if self.pooler == 'first':
            return tokens[:, 0]
        if self.pooler == 'last':
            return tokens[:, -1]
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        return tokens[rows, token_indices.argmax(dim=-1)]


def build_towers(vision_backbone: nn.Module, text_backbone: nn.Module, embed_dim: int,
                 vision_cfg: Optional[dict] = None, text_cfg: Optional[dict] = None,
                 block_list_name: str = 'blocks') -> Tuple[VisionTower, TextTower]:
    """Both towers from their backbones and keyword arguments."""
    vision = VisionTower(vision_backbone, embed_dim, block_list_name=block_list_name,
                         **(vision_cfg or {}))
    text = TextTower(text_backbone, embed_dim, block_list_name=block_list_name,
                     **(text_cfg or {}))
    return vision, text
