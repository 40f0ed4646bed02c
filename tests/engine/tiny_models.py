"""Tiny models shared by the engine tests."""
import torch


def tiny_dino(seed: int = 0, perturb_student: bool = True):
    """A 2-block DINOv2 meta-architecture (CPU-fast); the student is nudged away from the
    teacher by default so that an EMA update has something to do."""
    from dino_mm.models.algorithms.dinov2 import DINOv2
    from dino_mm.models.backbones.vision_transformer import DinoVisionTransformer
    from dino_mm.registry import MODELS
    try:
        import mmcv  # noqa: F401
    except ImportError:  # MODELS' locations include the mmseg glue; DINO parts are loaded
        MODELS._imported = True
    torch.manual_seed(seed)
    backbone = DinoVisionTransformer(arch='dinov2_vits14', patch_size=8, img_size=32,
                                     embed_dim=32, depth=2, num_heads=2, block_chunks=2)
    head = dict(type='dino_mm.DINOHead', out_dim=16, hidden_dim=32, bottleneck_dim=16)
    model = DINOv2(backbone=backbone, dino_head=head, koleo_loss_weight=0.0)
    if perturb_student:
        with torch.no_grad():
            for p in model.student.parameters():
                p.add_(torch.randn_like(p) * 0.01)
    return model
