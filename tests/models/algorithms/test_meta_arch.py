"""The one SSL meta-architecture: what the variants share and what they override."""
import torch
from torch import nn

from dino_mm.models.algorithms import DINOv2, DINOv3, DINOv3Distillation, MultiDistillation
from dino_mm.models.algorithms.base import FrozenModuleDict, SSLMetaArch

VARIANTS = (DINOv2, DINOv3, DINOv3Distillation, MultiDistillation)
# The wiring and the shared steps: defined once, in the base (or its optimisation mixin).
SHARED = ('loss', 'forward', 'prepare_inputs', 'update_teacher', 'train_step',
          'optimize_losses', 'clip_gradients', 'train')

PATCH = 8
HEAD = dict(out_dim=32, hidden_dim=32, bottleneck_dim=16, nlayers=2)


def _vit(dim=32, depth=2):
    return dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vits16', patch_size=PATCH,
                embed_dim=dim, depth=depth, num_heads=2, layerscale_init=1.0,
                pos_embed_rope_rescale_coords=None)


def test_every_variant_is_an_ssl_meta_arch_that_overrides_only_its_losses():
    for cls in VARIANTS:
        assert issubclass(cls, SSLMetaArch), cls
        for name in SHARED:
            owner = next(k for k in cls.__mro__ if name in vars(k))
            # defined by the base, its mixin or MMEngine / torch, never by a variant
            assert not issubclass(owner, SSLMetaArch) or owner is SSLMetaArch, \
                f'{cls.__name__}.{name} is redefined in {owner.__name__}'
        assert 'compute_losses' in vars(cls) or cls is DINOv3Distillation, cls


def test_frozen_components_stay_in_eval_mode_without_gradients():
    frozen = FrozenModuleDict(dict(layer=nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))))
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not frozen.training and not frozen.layer[1].training
    model = DINOv3Distillation(backbone=_vit(), dino_head=HEAD, ibot_head=HEAD,
                               teacher=dict(backbone=_vit(48), dino_head=HEAD, ibot_head=HEAD))
    model.train()
    assert model.student.training
    for part in (model.teacher, model.student_ema):
        assert isinstance(part, FrozenModuleDict) and not part.training
        assert not any(p.requires_grad for p in part.parameters())
    # the EMA blends the student into `student_ema`; the pretrained teacher is not touched
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    model.update_teacher(0.0)
    for (name, p), q in zip(model.student.named_parameters(), model.student_ema.parameters()):
        assert torch.equal(p, q), name
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    assert set(model.eval_backbone_state_dict()) == set(model.student_ema.backbone.state_dict())


def test_teacher_output_is_in_crop_order():
    """The teacher targets of crop i belong to the images of crop i (no swap)."""
    model = DINOv3(backbone=_vit(), dino_head=HEAD, ibot_head=HEAD).eval()
    torch.manual_seed(0)
    crops = torch.randn(2 * 3, 3, 16, 16)  # 2 crops x 3 images, crop-major
    masks = torch.zeros(6, 4, dtype=torch.bool)
    batch = dict(collated_global_crops=crops, collated_masks=masks,
                 mask_indices_list=torch.zeros(0, dtype=torch.long),
                 masks_weight=torch.zeros(0), n_masked_patches=torch.tensor([0]))
    targets = model.teacher_output(model.prepare_inputs(**batch))['dino']
    swapped = dict(batch, collated_global_crops=torch.cat((crops[3:], crops[:3])))
    targets_swapped = model.teacher_output(model.prepare_inputs(**swapped))['dino']
    # Sinkhorn-Knopp normalises over the whole batch, so a swap of the crops only permutes
    torch.testing.assert_close(targets_swapped, targets.flip(0))
    assert not torch.allclose(targets[0], targets[1])
