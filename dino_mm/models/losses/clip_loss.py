"""The symmetric contrastive (CLIP / InfoNCE) loss of dino.txt, distributed-aware.

Every rank scores its images against the texts of *all* ranks and its texts against all
images, so the negatives are the global batch, as in the official dino.txt training. The
official code streams the other ranks' features around a ring to save memory; this one
gathers them (:func:`~dino_mm.utils.dist.all_gather_with_grad`), which is the same
function and gradient at the cost of holding the global ``(B, N)`` logits on each rank.

With equal per-rank batches, the mean of the per-rank losses (what DDP's gradient average
optimises) equals the loss of one process over the concatenated batch.
"""
import torch
import torch.nn.functional as F
from torch import nn

from dino_mm.registry import MODELS
from dino_mm.utils.dist import all_gather_with_grad, get_rank, get_world_size

__all__ = ['clip_loss', 'CLIPLoss']


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
              logit_scale: torch.Tensor, gather: bool = True) -> torch.Tensor:
    """``(CE(image -> texts) + CE(text -> images)) / 2`` over the global batch.

    Computed in fp32 (the official loss casts its inputs to float).

    Args:
        image_features (Tensor): (B, D) L2-normalised image embeddings of this rank.
        text_features (Tensor): (B, D) L2-normalised text embeddings; row i is the caption
            of image i.
        logit_scale (Tensor): The multiplier of the cosines (already exponentiated).
        gather (bool): Take the negatives from every rank. Defaults to True.

    Returns:
        Tensor: Scalar loss, averaged over this rank's pairs.
    """
    if image_features.shape != text_features.shape or image_features.dim() != 2:
        raise ValueError(f'clip_loss expects two (B, D) tensors of one shape, got '
                         f'{tuple(image_features.shape)} and {tuple(text_features.shape)}')
    image_features, text_features = image_features.float(), text_features.float()
    logit_scale = logit_scale.float()
    batch = image_features.shape[0]
    offset = 0
    all_images, all_texts = image_features, text_features
    if gather and get_world_size() > 1:
        all_images = all_gather_with_grad(image_features)
        all_texts = all_gather_with_grad(text_features)
        offset = get_rank() * batch
    labels = torch.arange(offset, offset + batch, device=image_features.device)
    image_logits = logit_scale * image_features @ all_texts.t()
    text_logits = logit_scale * text_features @ all_images.t()
    return (F.cross_entropy(image_logits, labels) + F.cross_entropy(text_logits, labels)) / 2


@MODELS.register_module()
class CLIPLoss(nn.Module):
    """Module form of :func:`clip_loss` for configs.

    Args:
        gather (bool): Negatives from every rank. Defaults to True.
    """

    def __init__(self, gather: bool = True) -> None:
        super().__init__()
        self.gather = gather

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor) -> torch.Tensor:
        return clip_loss(image_features, text_features, logit_scale, gather=self.gather)
