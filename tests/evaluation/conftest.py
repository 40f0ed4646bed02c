"""Real data (scikit-learn digits) and tiny backbones shared by the evaluation tests."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.structures import BaseDataElement
from torch.utils.data import Dataset


def digits_images(size: int = 28):
    """sklearn digits upsampled to ``size`` px, 3 channels, float in [0, 1]; and labels."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = torch.from_numpy(digits.images).float()[:, None] / 16.0
    x = F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False)
    return x.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(digits.target).long()


class DigitsDataset(Dataset):
    """MMEngine-style samples: ``inputs`` uint8 CHW and a data sample with gt_label and
    ``sample_idx`` (what mmengine's BaseDataset + PackInputs provide)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, with_index: bool = True):
        self.images = (images * 255).round().to(torch.uint8)
        self.labels = labels
        self.with_index = with_index
        self.metainfo = dict(classes=[str(i) for i in range(10)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        meta = dict(sample_idx=i) if self.with_index else {}
        sample = BaseDataElement(metainfo=meta)
        sample.gt_label = torch.tensor([int(self.labels[i])])
        return dict(inputs=self.images[i], data_samples=sample)


def tiny_vit(**kw):
    from dino_mm.models.backbones.vision_transformer import DinoVisionTransformer
    cfg = dict(arch='dinov2_vits14', depth=4, embed_dim=32, num_heads=2, patch_size=14,
               img_size=28)
    cfg.update(kw)
    torch.manual_seed(0)
    model = DinoVisionTransformer(**cfg)
    model.init_weights()
    return model.eval()


@pytest.fixture(scope='session')
def digits():
    return digits_images(28)
