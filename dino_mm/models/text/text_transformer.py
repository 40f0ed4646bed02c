"""The dino.txt text backbone: a CLIP-style causal transformer with the official key names.

Key layout (``text_model.backbone.`` in a released file)::

    token_embedding.weight                (vocab, D)
    positional_embedding                  (context, D)
    blocks.{i}.attention_norm.{weight,bias}
    blocks.{i}.attention.qkv.weight       (3D, D)   no bias
    blocks.{i}.attention.proj.{weight,bias}
    blocks.{i}.ffn_norm.{weight,bias}
    blocks.{i}.feed_forward.fc1.{weight,bias}, fc2.{weight,bias}   GELU MLP
    blocks.{i}.ls1.gamma, ls2.gamma       only with ls_init_value
    ln_final.{weight,bias}

The attention is written here rather than taken from ``nn.MultiheadAttention`` or timm
because neither has this layout (a bias-free fused ``qkv`` next to a biased ``proj``) nor
SDPA's causal flag; the MLP is timm's.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from dino_mm.registry import MODELS

from ..layers.layer_scale import LayerScale

__all__ = ['CausalSelfAttention', 'CausalSelfAttentionBlock', 'TextTransformer']


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention, causal or not, with a bias-free fused ``qkv``.

    Args:
        dim (int): Width.
        num_heads (int): Heads.
        qkv_bias (bool): Bias on ``qkv``. Defaults to False (official).
        attn_drop (float): Attention dropout. Defaults to 0.
        proj_drop (float): Output dropout. Defaults to 0.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads}).')
        self.dim, self.num_heads = dim, num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def init_weights(self, attn_std: float, proj_std: float) -> None:
        nn.init.normal_(self.qkv.weight, std=attn_std)
        nn.init.normal_(self.proj.weight, std=proj_std)
        if self.qkv.bias is not None:
            nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, is_causal: bool = True) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).unbind(2)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            dropout_p=self.attn_drop if self.training else 0.0, is_causal=is_causal)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))


class CausalSelfAttentionBlock(nn.Module):
    """Pre-norm block ``x + ls1(attn(attention_norm(x)))``, ``+ ls2(mlp(ffn_norm(.)))``.

    Args:
        dim (int): Width.
        num_heads (int): Heads.
        ffn_ratio (float): MLP width / dim. Defaults to 4.
        ls_init_value (float, optional): LayerScale init; None disables it (official).
        is_causal (bool): Causal attention mask. Defaults to True.
        dropout_prob (float): Attention, projection and MLP dropout. Defaults to 0.
    """

    def __init__(self, dim: int, num_heads: int, ffn_ratio: float = 4.0,
                 ls_init_value: Optional[float] = None, is_causal: bool = True,
                 dropout_prob: float = 0.0) -> None:
        super().__init__()
        self.dim, self.is_causal = dim, is_causal
        self.ls1 = LayerScale(dim, ls_init_value) if ls_init_value else nn.Identity()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = CausalSelfAttention(dim, num_heads, attn_drop=dropout_prob,
                                             proj_drop=dropout_prob)
        self.ffn_norm = nn.LayerNorm(dim)
        self.feed_forward = Mlp(dim, int(dim * ffn_ratio), act_layer=nn.GELU,
                                drop=dropout_prob)
        self.ls2 = LayerScale(dim, ls_init_value) if ls_init_value else nn.Identity()

    def init_weights(self, attn_std: Optional[float] = None, proj_std: Optional[float] = None,
                     fc_std: Optional[float] = None) -> None:
        attn_std = attn_std or self.dim ** -0.5
        proj_std = proj_std or attn_std
        fc_std = fc_std or (2 * self.dim) ** -0.5
        self.attention.init_weights(attn_std, proj_std)
        nn.init.normal_(self.feed_forward.fc1.weight, std=fc_std)
        nn.init.normal_(self.feed_forward.fc2.weight, std=proj_std)
        self.attention_norm.reset_parameters()
        self.ffn_norm.reset_parameters()
        for ls in (self.ls1, self.ls2):
            if isinstance(ls, LayerScale):
                ls.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attention(self.attention_norm(x), self.is_causal))
        return x + self.ls2(self.feed_forward(self.ffn_norm(x)))


@MODELS.register_module()
class TextTransformer(nn.Module):
    """Token + learned positional embedding, causal blocks, final LayerNorm.

    The official ``tet1280d20h24l`` tower is ``context_length=77, vocab_size=49408,
    dim=1280, num_heads=20, num_layers=24, ffn_ratio=4, is_causal=True``.

    Args:
        context_length (int): Longest token sequence. Defaults to 77.
        vocab_size (int): Token vocabulary. Defaults to 49408 (CLIP BPE).
        dim (int): Width. Defaults to 1280.
        num_heads (int): Heads. Defaults to 20.
        num_layers (int): Blocks. Defaults to 24.
        ffn_ratio (float): MLP width / dim. Defaults to 4.
        is_causal (bool): Causal attention. Defaults to True.
        ls_init_value (float, optional): LayerScale init; None (official) disables it.
        dropout_prob (float): Dropout everywhere. Defaults to 0.
    """

    def __init__(self, context_length: int = 77, vocab_size: int = 49408, dim: int = 1280,
                 num_heads: int = 20, num_layers: int = 24, ffn_ratio: float = 4.0,
                 is_causal: bool = True, ls_init_value: Optional[float] = None,
                 dropout_prob: float = 0.0) -> None:
        super().__init__()
        self.context_length, self.vocab_size = context_length, vocab_size
        self.embed_dim, self.num_heads, self.num_layers = dim, num_heads, num_layers
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, dim))
        self.dropout = nn.Dropout(dropout_prob)
        self.blocks = nn.ModuleList([
            CausalSelfAttentionBlock(dim, num_heads, ffn_ratio, ls_init_value, is_causal,
                                     dropout_prob) for _ in range(num_layers)])
        self.ln_final = nn.LayerNorm(dim)
        self.init_weights()

    def init_weights(self) -> None:
        """The official init (CLIP's): std 0.02 tokens, 0.01 positions, scaled blocks."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        attn_std = self.embed_dim ** -0.5
        proj_std = attn_std * (2 * self.num_layers) ** -0.5
        fc_std = (2 * self.embed_dim) ** -0.5
        for block in self.blocks:
            block.init_weights(attn_std, proj_std, fc_std)
        self.ln_final.reset_parameters()

    def forward(self, token_indices: torch.Tensor) -> torch.Tensor:
        """(B, N) token ids -> (B, N, D) normalised token features."""
        if token_indices.dim() != 2:
            raise ValueError(f'expected (batch, tokens) token ids, got shape '
                             f'{tuple(token_indices.shape)}')
        n = token_indices.shape[1]
        if n > self.context_length:
            raise ValueError(f'{n} tokens exceed the text context of {self.context_length}; '
                             'tokenize with context_length <= the model\'s (the tokenizer '
                             'truncates as the official one does)')
        x = self.token_embedding(token_indices) + self.positional_embedding[:n]
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x)
        return self.ln_final(x)
