"""DINOv2 meta-architecture: step parity with a step assembled from the official pieces."""
import contextlib
import math
from functools import partial

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from mmengine.optim import OptimWrapper

from dino_mm.models.algorithms import DINOv2
from dino_mm.models.backbones import DinoVisionTransformer
from dino_mm.registry import MODELS

from tests.oracles import require

dinov2 = require('dinov2')
from dinov2.layers import DINOHead as OfficialHead  # noqa: E402
from dinov2.layers import MemEffAttention, NestedTensorBlock  # noqa: E402
from dinov2.loss import DINOLoss as OfficialDINOLoss  # noqa: E402
from dinov2.loss import iBOTPatchLoss as OfficialiBOTLoss  # noqa: E402
from dinov2.loss import KoLeoLoss as OfficialKoLeo  # noqa: E402
from dinov2.models.vision_transformer import \
    DinoVisionTransformer as OfficialViT  # noqa: E402

B, N_LOCAL, GLOBAL, LOCAL, PATCH, DIM = 3, 2, 32, 16, 8, 48
N_PATCH = (GLOBAL // PATCH)**2
BACKBONE = dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vits14', img_size=GLOBAL,
                patch_size=PATCH, embed_dim=DIM, depth=2, num_heads=4, layerscale_init=1e-5,
                drop_path_rate=0.0)
HEAD = dict(out_dim=40, hidden_dim=64, bottleneck_dim=16, nlayers=3)
IBOT_HEAD = dict(out_dim=24, hidden_dim=64, bottleneck_dim=16, nlayers=3)


@pytest.fixture
def gloo_group(tmp_path):
    """The official iBOT Sinkhorn-Knopp all-reduces unconditionally: give it a group."""
    if dist.is_initialized():
        pytest.skip('a process group is already initialised')
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "pg"}', rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def make_batch(real_images, seed=0):
    """Official collate layout built by hand: crop-major crops, random block-free masks."""
    gen = torch.Generator().manual_seed(seed)
    imgs = [torch.from_numpy(real_images[k]).permute(2, 0, 1).float() / 255
            for k in ('astronaut', 'chelsea', 'coffee')]

    def crops(size, n):
        out = []
        for _ in range(n):
            for img in imgs:
                h, w = img.shape[1:]
                s = int(torch.randint(min(h, w) // 3, min(h, w), (1,), generator=gen))
                y = int(torch.randint(0, h - s + 1, (1,), generator=gen))
                x = int(torch.randint(0, w - s + 1, (1,), generator=gen))
                crop = F.interpolate(img[None, :, y:y + s, x:x + s], size=(size, size),
                                     mode='bilinear', align_corners=False)[0]
                out.append((crop - 0.45) / 0.225)
        return torch.stack(out)

    masks = torch.rand(2 * B, N_PATCH, generator=gen) < 0.35
    masks[1] = False  # the official collate leaves half of the images unmasked
    masks[4, :2] = True
    mask_indices_list = masks.flatten().nonzero().flatten()
    masks_weight = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    return dict(collated_global_crops=crops(GLOBAL, 2),
                collated_local_crops=crops(LOCAL, N_LOCAL), collated_masks=masks,
                mask_indices_list=mask_indices_list, masks_weight=masks_weight,
                upperbound=int(mask_indices_list.numel()) + 5,
                n_masked_patches=torch.tensor([mask_indices_list.numel()], dtype=torch.long))


def build_model(separate, centering='centering', **kwargs):
    return DINOv2(backbone=BACKBONE, dino_head=HEAD, ibot_head=IBOT_HEAD if separate else None,
                  centering=centering, **kwargs)


class OfficialStep:
    """The official forward_backward written out with the official modules (no xFormers:
    crops go through the backbone one list element at a time, heads on concatenations)."""

    def __init__(self, model: DINOv2, separate: bool, centering: str):
        self.separate, self.centering = separate, centering

        def vit():
            return OfficialViT(img_size=GLOBAL, patch_size=PATCH, embed_dim=DIM, depth=2,
                               num_heads=4, mlp_ratio=4, init_values=1e-5,
                               block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention),
                               ffn_layer='mlp', block_chunks=0)

        def head(cfg):
            return OfficialHead(in_dim=DIM, **cfg)

        self.student = torch.nn.ModuleDict(dict(backbone=vit(), dino_head=head(HEAD)))
        self.teacher = torch.nn.ModuleDict(dict(backbone=vit(), dino_head=head(HEAD)))
        if separate:
            self.student['ibot_head'] = head(IBOT_HEAD)
            self.teacher['ibot_head'] = head(IBOT_HEAD)
        self.dino_loss = OfficialDINOLoss(HEAD['out_dim'])
        self.ibot_loss = OfficialiBOTLoss((IBOT_HEAD if separate else HEAD)['out_dim'])
        self.koleo = OfficialKoLeo()
        # The dtype first, the weights after: loading float64 weights into fp32 modules
        # would round them.
        dtype = next(model.parameters()).dtype
        for m in (self.student, self.teacher, self.dino_loss, self.ibot_loss):
            m.to(dtype)
        self.student.load_state_dict(model.student.state_dict())
        self.teacher.load_state_dict(model.teacher.state_dict())
        self.teacher.eval()

    def __call__(self, images, teacher_temp):
        n_g, n_l = 2, N_LOCAL
        global_crops, local_crops = images['collated_global_crops'], images[
            'collated_local_crops']
        masks, mask_indices_list = images['collated_masks'], images['mask_indices_list']
        n_masked = mask_indices_list.shape[0]
        upperbound, masks_weight = images['upperbound'], images['masks_weight']
        n_local_terms, n_global_terms = max(n_l * n_g, 1), (n_g - 1) * n_g

        with torch.no_grad():
            out = self.teacher.backbone(global_crops, is_training=True)
            t_cls = out['x_norm_clstoken'].chunk(n_g)
            t_cls = torch.cat((t_cls[1], t_cls[0]))
            t_patch = out['x_norm_patchtokens']
            n_cls = t_cls.shape[0]
            if not self.separate:
                buf = t_patch.new_zeros(upperbound + n_cls, DIM)
                buf[:n_cls].copy_(t_cls)
                torch.index_select(t_patch.flatten(0, 1), 0, mask_indices_list,
                                   out=buf[n_cls:n_cls + n_masked])
                tok = self.teacher.dino_head(buf)
                t_cls_head, t_patch_head = tok[:n_cls], tok[n_cls:n_cls + n_masked]
            else:
                buf = t_patch.new_zeros(upperbound, DIM)
                torch.index_select(t_patch.flatten(0, 1), 0, mask_indices_list,
                                   out=buf[:n_masked])
                t_cls_head = self.teacher.dino_head(t_cls)
                t_patch_head = self.teacher.ibot_head(buf)[:n_masked]
            if self.centering == 'centering':
                t_dino = self.dino_loss.softmax_center_teacher(
                    t_cls_head, teacher_temp=teacher_temp).view(n_g, -1, t_cls_head.shape[-1])
                self.dino_loss.update_center(t_cls_head)
                t_patch_head = t_patch_head.unsqueeze(0)
                t_ibot = self.ibot_loss.softmax_center_teacher(
                    t_patch_head[:, :n_masked], teacher_temp=teacher_temp).squeeze(0)
                self.ibot_loss.update_center(t_patch_head[:n_masked])
            else:
                t_dino = self.dino_loss.sinkhorn_knopp_teacher(
                    t_cls_head, teacher_temp=teacher_temp).view(n_g, -1, t_cls_head.shape[-1])
                t_ibot = self.ibot_loss.sinkhorn_knopp_teacher(
                    t_patch_head, teacher_temp=teacher_temp,
                    n_masked_patches_tensor=images['n_masked_patches'].clone())

        s_global = self.student.backbone.forward_features(global_crops, masks)
        s_local = self.student.backbone.forward_features(local_crops, None)
        inputs = [s_local['x_norm_clstoken'], s_global['x_norm_clstoken']]
        s_patch = s_global['x_norm_patchtokens']
        buf = s_patch.new_zeros(upperbound, DIM)
        buf[:n_masked].copy_(torch.index_select(s_patch.flatten(0, 1), 0, mask_indices_list))
        if not self.separate:
            inputs.append(buf)
        else:
            s_patch_head = self.student.ibot_head(buf)[:n_masked]
        outs = self.student.dino_head(torch.cat(inputs)).split([t.shape[0] for t in inputs])
        s_local_head, s_global_head = outs[0], outs[1]
        if not self.separate:
            s_patch_head = outs[2][:n_masked]

        losses = {}
        losses['dino_local_crops_loss'] = self.dino_loss(
            s_local_head.chunk(n_l), t_dino) / (n_global_terms + n_local_terms)
        losses['dino_global_crops_loss'] = self.dino_loss(
            [s_global_head], [t_dino.flatten(0, 1)]) * 2 / (n_global_terms + n_local_terms)
        losses['koleo_loss'] = 0.1 * sum(
            self.koleo(p) for p in s_global['x_norm_clstoken'].chunk(2))
        losses['ibot_loss'] = self.ibot_loss.forward_masked(
            s_patch_head, t_ibot, student_masks_flat=masks, n_masked_patches=n_masked,
            masks_weight=masks_weight) * 2 * (1.0 / n_g)
        return losses


def _perturb_teacher(model):
    with torch.no_grad():
        for p in model.teacher.parameters():
            p.add_(torch.randn_like(p) * 0.02 * (p.std() if p.numel() > 1 else 1))


@pytest.mark.parametrize('separate', [False, True])
@pytest.mark.parametrize('centering', ['centering', 'sinkhorn_knopp'])
def test_step_parity_with_official_pieces(real_images, gloo_group, separate, centering):
    # Compared in float64: the step is the same math in both, so any difference is a wiring
    # error (O(1)), never rounding. In fp32, KoLeo on the nearly identical class tokens of a
    # random-init ViT (log of ~1e-3 distances) amplifies rounding to ~2e-4 on some CPUs,
    # which no fixed fp32 bound separates from a defect reliably.
    with _float_upcasts_only():
        _step_parity(real_images, separate, centering)


@contextlib.contextmanager
def _float_upcasts_only():
    """Both implementations call ``x.float()`` in their losses to *upcast* half-precision
    inputs to fp32; on float64 inputs that would downcast. Within this block ``.float()``
    means "at least fp32" (fp16/bf16/bool/int -> fp32, fp32 and fp64 unchanged) for both
    sides alike, so the whole step runs in float64."""
    orig = torch.Tensor.float

    def upcast(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else orig(self, *args, **kwargs)

    torch.Tensor.float = upcast
    try:
        yield
    finally:
        torch.Tensor.float = orig


def _step_parity(real_images, separate, centering):
    model = build_model(separate, centering).double()
    _perturb_teacher(model)  # teacher != student, as after a few EMA steps
    official = OfficialStep(model, separate, centering)
    model.train()
    official.student.train()
    for it in range(2):  # the second iteration uses the lazily updated centers
        batch = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
                 for k, v in make_batch(real_images, seed=it).items()}
        temp = 0.04 + 0.01 * it
        model.teacher_temp = temp
        ours = model(**batch, mode='loss')
        ref = official(batch, temp)
        assert set(ours) == set(ref)
        for key in ref:
            torch.testing.assert_close(ours[key], ref[key], rtol=1e-10, atol=1e-12, msg=key)
        total, total_ref = sum(ours.values()), sum(ref.values())
        assert math.isfinite(total.item())
        model.zero_grad()
        official.student.zero_grad()
        total.backward()
        total_ref.backward()
        ref_params = dict(official.student.named_parameters())
        n_checked = 0
        worst = [0.0]
        for name, p in model.student.named_parameters():
            g, g_ref = p.grad, ref_params[name].grad
            assert (g is None) == (g_ref is None), name
            if g is None:
                continue
            # Relative Frobenius error per tensor. float64 has 2**-52 ~ 2.2e-16 unit
            # roundoff; even amplified 1e4-fold by the ill-conditioned KoLeo term and summed
            # over the <=4096-term reductions here, rounding stays below 1e-8, while a wrong
            # weight, crop swap or loss scale gives O(1) errors.
            rel = ((g - g_ref).norm() / g_ref.norm().clamp(min=1e-300)).item()
            assert rel < 1e-8, (name, rel)
            worst[0] = max(worst[0], rel)
            n_checked += 1
        assert n_checked == len(ref_params)
        print(f'[{centering}, separate={separate}, it={it}] worst grad rel err {worst[0]:.2e}, '
              f'loss abs err {max(abs(ours[k] - ref[k]).item() for k in ref):.2e}')
    if centering == 'centering':
        model.dino_loss.apply_center_update()
        official.dino_loss.apply_center_update()
        torch.testing.assert_close(model.dino_loss.center, official.dino_loss.center)
        model.ibot_patch_loss.apply_center_update()
        official.ibot_loss.apply_center_update()
        torch.testing.assert_close(model.ibot_patch_loss.center, official.ibot_loss.center)


def test_structure_keys_and_teacher_state(real_images):
    model = MODELS.build(dict(type='dino_mm.DINOv2', backbone=BACKBONE, dino_head=HEAD,
                              ibot_head=IBOT_HEAD))
    keys = model.state_dict().keys()
    assert any(k.startswith('student.backbone.blocks.0.') for k in keys)
    assert 'teacher.dino_head.last_layer.weight_g' in keys
    assert 'teacher.ibot_head.last_layer.weight_v' in keys
    assert {'dino_loss.center', 'ibot_patch_loss.center'} <= set(keys)
    assert all(not p.requires_grad for p in model.teacher.parameters())
    model.train()
    assert model.student.training and not model.teacher.training
    # init_weights re-initialises the student; the teacher must follow.
    model.init_weights()
    for (name, p), p_t in zip(model.student.named_parameters(), model.teacher.parameters()):
        assert torch.equal(p, p_t), name
    # Official backbone layout: loads strictly into a plain backbone.
    cfg = dict(BACKBONE)
    cfg.pop('type')
    plain = DinoVisionTransformer(**cfg)
    plain.load_state_dict(model.eval_backbone_state_dict(), strict=True)
    plain.load_state_dict(model.student_backbone_state_dict(), strict=True)
    x = make_batch(real_images)['collated_global_crops'][:2]
    feats = model(x, mode='tensor')
    assert feats.shape == (2, DIM) and not feats.requires_grad
    torch.testing.assert_close(feats, plain.eval().forward_features(x)['x_norm_clstoken'])


def test_teacher_built_without_drop_path():
    model = DINOv2(backbone=dict(BACKBONE, drop_path_rate=0.2), dino_head=HEAD)
    rates = lambda m: [getattr(mod, 'drop_prob', 0) for mod in m.modules()]  # noqa: E731
    assert max(rates(model.student.backbone)) > 0
    assert max(rates(model.teacher.backbone)) == 0


def test_update_teacher_is_ema():
    model = build_model(True)
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.teacher.parameters()]
    model.update_teacher(0.9)
    for p_t, p_0, p_s in zip(model.teacher.parameters(), before, model.student.parameters()):
        torch.testing.assert_close(p_t, 0.9 * p_0 + 0.1 * p_s)


def test_train_step_clips_per_submodule_and_leaves_teacher(real_images):
    model = build_model(True, clip_grad=1e-3)
    batch = make_batch(real_images)
    optim = OptimWrapper(torch.optim.SGD(model.student.parameters(), lr=1.0))
    # Reference: same step by hand.
    ref = build_model(True, clip_grad=1e-3)
    ref.load_state_dict(model.state_dict())
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    log_vars = model.train_step(batch, optim)
    assert {'loss', 'dino_local_crops_loss', 'ibot_loss', 'koleo_loss',
            'grad_norm_backbone', 'grad_norm_dino_head', 'grad_norm_ibot_head'} <= set(log_vars)
    parts = [v for k, v in log_vars.items() if 'loss' in k and k != 'loss']
    torch.testing.assert_close(log_vars['loss'], sum(parts))
    losses = ref(**batch, mode='loss')
    sum(losses.values()).backward()
    for name, module in ref.student.items():
        norm = torch.nn.utils.clip_grad_norm_(module.parameters(), 1e-3)
        assert norm > 1e-3, name  # clipping really happened
        torch.testing.assert_close(log_vars[f'grad_norm_{name}'], norm)
    with torch.no_grad():
        for p in ref.student.parameters():
            p.sub_(p.grad)
    for (name, p), p_ref in zip(model.student.named_parameters(), ref.student.parameters()):
        torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-7, msg=name)
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k


def test_train_step_unscales_before_clipping(real_images):
    """AMP path: grads are unscaled (loss_scaler.unscale_) before the per-module clip."""
    model = build_model(False, clip_grad=1e-3)
    ref = build_model(False, clip_grad=1e-3)
    ref.load_state_dict(model.state_dict())
    batch = make_batch(real_images)

    class ScaledWrapper(OptimWrapper):
        def __init__(self, optimizer):
            super().__init__(optimizer)
            self.loss_scaler = torch.amp.GradScaler('cpu', init_scale=1024.0)

        def backward(self, loss, **kwargs):
            self.loss_scaler.scale(loss).backward(**kwargs)
            self._inner_count += 1

        def step(self, **kwargs):
            self.loss_scaler.step(self.optimizer, **kwargs)
            self.loss_scaler.update()

    log_amp = model.train_step(batch, ScaledWrapper(torch.optim.SGD(model.student.parameters(),
                                                                    lr=1.0)))
    log_ref = ref.train_step(batch, OptimWrapper(torch.optim.SGD(ref.student.parameters(),
                                                                 lr=1.0)))
    torch.testing.assert_close(log_amp['grad_norm_backbone'], log_ref['grad_norm_backbone'],
                               rtol=1e-4, atol=0)
    for p, p_ref in zip(model.student.parameters(), ref.student.parameters()):
        torch.testing.assert_close(p, p_ref, rtol=1e-4, atol=1e-7)


def test_nan_loss_raises_named_error(real_images):
    model = build_model(False)
    batch = make_batch(real_images)
    batch['collated_local_crops'][0, 0, 0, 0] = float('nan')
    optim = OptimWrapper(torch.optim.SGD(model.student.parameters(), lr=1.0))
    before = [p.clone() for p in model.student.parameters()]
    with pytest.raises(FloatingPointError, match='dino_local_crops_loss=nan'):
        model.train_step(batch, optim)
    assert all(torch.equal(a, b) for a, b in zip(before, model.student.parameters()))


def test_optim_wrapper_clip_grad_conflict(real_images):
    model = build_model(False)
    optim = OptimWrapper(torch.optim.SGD(model.student.parameters(), lr=1.0),
                         clip_grad=dict(max_norm=1.0))
    with pytest.raises(ValueError, match='per student sub-module'):
        model.train_step(make_batch(real_images), optim)


def test_without_local_crops_and_loss_switches(real_images):
    model = build_model(False, koleo_loss_weight=0.0)
    batch = make_batch(real_images)
    batch['collated_local_crops'] = None
    losses = model(**batch, mode='loss')
    assert set(losses) == {'dino_global_crops_loss', 'ibot_loss'}
    assert not hasattr(model, 'koleo_loss')


def test_bad_config_errors():
    with pytest.raises(ValueError, match='centering'):
        build_model(False, centering='softmax')
    with pytest.raises(KeyError, match='out_dim'):
        DINOv2(backbone=BACKBONE, dino_head=dict(hidden_dim=8))
    with pytest.raises(ValueError, match='mode'):
        build_model(False)(torch.zeros(1, 3, 32, 32), mode='predict')
