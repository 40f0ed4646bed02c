"""A project-local module: a cosine-similarity classifier head.

It is registered into dino_mm's MODELS registry from the project folder, so configs load
it through ``custom_imports`` without any change to the dino_mm package.
"""
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmpretrain.models.heads import ClsHead

from dino_mm.registry import MODELS


@MODELS.register_module()
class CosineClsHead(ClsHead):
    """Linear classifier on L2-normalised features and class weights.

    Args:
        num_classes (int): Number of classes.
        in_channels (int): Feature dimension of the backbone output.
        scale (float): Logit scale (inverse temperature). Defaults to 16.
        **kwargs: Passed to :class:`mmpretrain.models.heads.ClsHead` (loss, topk, ...).
    """

    def __init__(self, num_classes: int, in_channels: int, scale: float = 16.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale
        self.weight = nn.Parameter(torch.randn(num_classes, in_channels) * 0.01)

    def pre_logits(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        return feats[-1]

    def forward(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        x = F.normalize(self.pre_logits(feats), dim=-1)
        return self.scale * x @ F.normalize(self.weight, dim=-1).t()
