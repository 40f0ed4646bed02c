"""Unit checks of dino_mm.engine.fsdp in one process (a 1-rank gloo group).

The 2-rank training / resume / kill checks are in tests/pretrain/test_dist_pretrain.py.
"""
import os
import os.path as osp
import pickle

import pytest
import torch

from dino_mm.engine.checkpoint import CheckpointError
from dino_mm.engine.fsdp import (DINOFSDPStrategy, fsdp_update_teacher, is_sharded_checkpoint,
                                 load_sharded_checkpoint, read_sharded_state_dict,
                                 save_sharded_checkpoint, shard_dino_model)

from tests.engine.tiny_models import tiny_dino

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_shard_keeps_names_and_mixed_precision(group):
    from torch.distributed.tensor import DTensor
    model = tiny_dino()
    names = [n for n, _ in model.named_parameters()]
    mp = dict(student=dict(backbone=dict(param_dtype='bf16', reduce_dtype='fp32')),
              teacher=dict(backbone=dict(param_dtype='bf16')))
    shard_dino_model(model, mixed_precision=mp)
    assert [n for n, _ in model.named_parameters()] == names  # layer-decay needs these
    assert all(isinstance(p, DTensor) and p.dtype == torch.float32
               for p in model.parameters())
    seen = {}
    blk = model.student.backbone._flat_blocks()[0]

    def record(module, args, output):
        seen['dtype'] = output.dtype

    blk.register_forward_hook(record)
    out = model.student.backbone.forward_features(torch.randn(2, 3, 32, 32))
    assert seen['dtype'] == torch.bfloat16
    assert torch.isfinite(out['x_norm_clstoken'].float()).all()


def test_shard_local_teacher_update_equals_unsharded(group):
    ref, model = tiny_dino(), tiny_dino()
    shard_dino_model(model)
    with torch.no_grad():  # the teacher forward leaves FSDP roots gathered
        model.teacher.backbone.forward_features(torch.randn(2, 3, 32, 32))
    for m in (0.9, 0.5):
        ref.update_teacher(m)
        fsdp_update_teacher(model, m)
    got = {k: v.full_tensor() for k, v in model.teacher.state_dict().items()
           if hasattr(v, 'full_tensor')}
    want = ref.teacher.state_dict()
    assert got and all(torch.equal(got[k], want[k]) for k in got)
    assert not torch.equal(want['backbone.cls_token'], ref.student.backbone.cls_token)


def test_bad_config_errors(group):
    with pytest.raises(KeyError, match='mixed_precision'):
        shard_dino_model(tiny_dino(), mixed_precision=dict(students={}))
    with pytest.raises(ValueError, match='param_dtype'):
        shard_dino_model(tiny_dino(), mixed_precision=dict(student=dict(
            backbone=dict(param_dtype='fp8'))))
    with pytest.raises(TypeError, match='student'):
        shard_dino_model(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"\['bf16', 'fp16'\]"):
        DINOFSDPStrategy(mixed_precision='fast')


def test_sharded_checkpoint_roundtrip_atomic_and_safe(group, tmp_path):
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    model = tiny_dino()
    shard_dino_model(model)
    path = str(tmp_path / 'iter_1.pth')
    save_sharded_checkpoint(path, {'model': get_model_state_dict(model)},
                            {'meta': {'iter': 1}})
    assert is_sharded_checkpoint(path) and not osp.exists(path + '.tmp')
    full = read_sharded_state_dict(path)
    assert torch.equal(full['teacher.backbone.cls_token'],
                       model.teacher.backbone.cls_token.full_tensor())
    # overwrite in place (same name) and reload into a differently initialised model
    save_sharded_checkpoint(path, {'model': get_model_state_dict(model)},
                            {'meta': {'iter': 1}})
    other = tiny_dino(seed=1)
    shard_dino_model(other)
    state = {'model': get_model_state_dict(other)}
    meta = load_sharded_checkpoint(path, state)
    assert meta['meta']['iter'] == 1
    assert torch.equal(state['model']['student.backbone.pos_embed'].full_tensor(),
                       model.student.backbone.pos_embed.full_tensor())
    # a save that died before the rename: only a .tmp folder, never picked up
    os.makedirs(str(tmp_path / 'iter_2.pth.tmp'))
    assert not is_sharded_checkpoint(str(tmp_path / 'iter_2.pth'))
    with pytest.raises(FileNotFoundError, match='not a directory'):
        load_sharded_checkpoint(str(tmp_path / 'iter_2.pth'), state)
    # .metadata is a pickle: anything outside the DCP classes is refused before loading
    with open(osp.join(path, '.metadata'), 'wb') as f:
        pickle.dump(os.system, f)
    with pytest.raises(CheckpointError, match='posix.system|not allowed'):
        read_sharded_state_dict(path)
    os.remove(osp.join(path, '.metadata'))
    with pytest.raises(CheckpointError, match='incomplete'):
        read_sharded_state_dict(path)


def test_consolidate_tool_rejects_plain_file(tmp_path, capsys):
    import sys
    sys.path.insert(0, osp.join(ROOT, 'tools', 'convert'))
    from consolidate_sharded import main
    plain = tmp_path / 'x.pth'
    torch.save({'a': torch.zeros(1)}, plain)
    assert main([str(plain), str(tmp_path / 'o.pth')]) == 2
    assert 'pretrain_to_backbone.py' in capsys.readouterr().err


@pytest.mark.parametrize('name', ['dinov2_vitl16-short_32xb64-100e_in1k_fsdp',
                                  'dinov2_vitl14_96xb32-500e_in22k_fsdp',
                                  'dinov2_vitg14_96xb12-500e_in22k_fsdp'])
def test_fsdp_configs(name):
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain', f'{name}.py'))
    assert cfg.runner_type == 'FlexibleRunner'
    assert cfg.strategy.type == 'dino_mm.DINOFSDPStrategy'
    mp = cfg.strategy.mixed_precision
    assert mp.student.dino_head.reduce_dtype == 'fp32'  # official fp32 head reductions
    # official DINOv2 precision: fp16 parameters with a sharded gradient scaler
    assert mp.student.backbone.param_dtype == mp.teacher.backbone.param_dtype == 'fp16'
    assert cfg.optim_wrapper.type == 'dino_mm.FP16OptimWrapper'
    assert cfg.optim_wrapper.constructor == 'dino_mm.LayerDecayOptimWrapperConstructor'
    assert cfg.model.backbone.block_chunks == 4
    strategy = DINOFSDPStrategy(**{k: v for k, v in cfg.strategy.items() if k != 'type'})
    assert strategy.reshard_after_forward is False


def test_fp16_needs_a_loss_scaler(group):
    """fp16 FSDP parameters with a plain OptimWrapper are refused before training; with
    dino_mm.FP16OptimWrapper the scaler is built (one rank: torch.amp.GradScaler)."""
    from dino_mm.engine.fsdp import FP16_MIXED_PRECISION
    model = tiny_dino()
    optimizer = dict(type='SGD', lr=0.1)
    strategy = DINOFSDPStrategy(mixed_precision='fp16')
    assert strategy.mixed_precision == FP16_MIXED_PRECISION
    with pytest.raises(ValueError, match='FP16OptimWrapper') as err:
        strategy.build_optim_wrapper(dict(type='OptimWrapper', optimizer=optimizer), model)
    assert 'student.backbone' in str(err.value)
    wrapper = strategy.build_optim_wrapper(
        dict(type='dino_mm.FP16OptimWrapper', optimizer=optimizer), model)
    assert type(wrapper.loss_scaler).__name__ == 'GradScaler'
    assert wrapper.loss_scaler.get_scale() == 2.0**16  # the official dynamic start
    assert 'loss_scaler' in wrapper.state_dict()
    # bf16 (the default) needs none
    DINOFSDPStrategy().build_optim_wrapper(dict(type='OptimWrapper', optimizer=optimizer),
                                           model)


def test_frozen_components_are_sharded_like_the_teacher(group):
    """The Gram teacher of DINOv3 is an FSDP unit per block, with the teacher's precision."""
    from torch.distributed.tensor import DTensor

    from dino_mm.engine.fsdp import frozen_components
    from tests.models.algorithms.test_dinov3 import build
    model = build()
    assert frozen_components(model) == ['gram_teacher']
    shard_dino_model(model, mixed_precision=dict(teacher=dict(backbone=dict(
        param_dtype='bf16'))))
    assert all(isinstance(p, DTensor) for p in model.gram_teacher.parameters())
    assert all(not p.requires_grad for p in model.gram_teacher.parameters())
    seen = {}
    blk = model.gram_teacher.backbone._flat_blocks()[0]
    blk.register_forward_hook(lambda m, a, o: seen.update(dtype=o.dtype) and None)
    with torch.no_grad():
        model.gram_teacher.backbone.forward_features(torch.randn(1, 3, 32, 32))
    assert seen['dtype'] == torch.bfloat16
    with pytest.raises(KeyError, match='gram_teacher'):
        shard_dino_model(build(), mixed_precision=dict(gram=dict()))


def test_sharded_checkpoint_keeps_the_loss_scale(group, tmp_path):
    """A resumed fp16 run continues with the saved (backed-off) scale, not 2**16."""
    from mmengine.logging import MMLogger

    from dino_mm.engine.optimizers import FP16OptimWrapper

    def strategy():
        s = DINOFSDPStrategy(mixed_precision='fp16', work_dir=str(tmp_path))
        s.model = shard_dino_model(tiny_dino(), mixed_precision=s.mixed_precision)
        s.optim_wrapper = FP16OptimWrapper(
            optimizer=torch.optim.AdamW(s.model.parameters(), lr=1e-3), device_type='cpu')
        s.logger = MMLogger.get_instance('test_fsdp_scaler')
        s._randomness = dict(seed=0)
        return s

    first = strategy()
    first.optim_wrapper.loss_scaler.scale(torch.ones(()))  # initialises the scale
    first.optim_wrapper.loss_scaler.update(2.0**7)  # as after 9 overflows
    path = str(tmp_path / 'iter_1.pth')
    first.save_checkpoint(path, save_param_scheduler=False)
    second = strategy()
    assert second.optim_wrapper.loss_scaler.get_scale() == 2.0**16
    second.resume(path, resume_param_scheduler=False)
    assert second.optim_wrapper.loss_scaler.get_scale() == 2.0**7


def test_gram_teacher_loads_from_a_sharded_stage_checkpoint(group, tmp_path):
    """A stage trained with FSDP (a DCP folder) is the next stage's Gram teacher."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from tests.models.algorithms.test_dinov3 import _perturb, build
    torch.manual_seed(1)
    stage1 = build()
    _perturb(stage1.teacher)
    want = {k: v.clone() for k, v in stage1.teacher.backbone.state_dict().items()}
    shard_dino_model(stage1, mixed_precision=None)
    path = str(tmp_path / 'iter_4.pth')
    save_sharded_checkpoint(path, {'model': get_model_state_dict(stage1)},
                            {'meta': {'iter': 4}})
    stage2 = build()
    assert not torch.equal(stage2.gram_teacher.backbone.cls_token, want['cls_token'])
    stage2.load_gram_teacher(path)
    got = stage2.gram_teacher.backbone.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    os.makedirs(tmp_path / 'not_a_checkpoint')
    with pytest.raises(FileNotFoundError, match='model.gram_ckpt'):
        stage2.load_gram_teacher(str(tmp_path / 'not_a_checkpoint'))


def test_dinov3_fsdp_config():
    """The DINOv3 7B stage-1 FSDP leaf: official bf16 / fp32-reduction table, plain
    OptimWrapper (no scaler needed), activation checkpointing."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain',
                                   'dinov3_vit7b16_pretrain_fsdp.py'))
    assert cfg.runner_type == 'FlexibleRunner' and cfg.model_wrapper_cfg is None
    mp = cfg.strategy.mixed_precision
    assert mp.student.backbone == dict(param_dtype='bf16', reduce_dtype='fp32')
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    assert cfg.model.type == 'dino_mm.DINOv3'
    strategy = DINOFSDPStrategy(**{k: v for k, v in cfg.strategy.items() if k != 'type'})
    assert strategy.activation_checkpointing is True
    assert strategy.compile_blocks is True  # official train.compile
    assert strategy.fp8_filter == 'blocks'  # official fp8_enabled, fp8_filter: blocks


def test_compile_blocks_keeps_names_and_numbers(group):
    """Official ``train.compile``: every backbone block compiled in place before sharding;
    names (checkpoint keys, layer decay) unchanged, losses and gradients as uncompiled."""
    import copy

    from dino_mm.engine.fsdp import compile_backbone_blocks
    from dino_mm.models.backbones.convnext import DinoConvNeXt
    from tests.pretrain.test_fsdp_fp16_gram import _batch
    ref = tiny_dino()
    model = copy.deepcopy(ref)
    names = [n for n, _ in model.named_parameters()]
    shard_dino_model(ref, mixed_precision=None)
    shard_dino_model(model, mixed_precision=None, compile_blocks=True)
    assert [n for n, _ in model.named_parameters()] == names
    blocks = model.student.backbone._flat_blocks()
    assert blocks and all(getattr(b, '_compiled_call_impl', None) is not None for b in blocks)
    assert all(getattr(b, '_compiled_call_impl', None) is not None
               for b in model.teacher.backbone._flat_blocks())
    from torch._dynamo.utils import counters
    counters.clear()
    results = []
    for m in (ref, model):
        losses = m(**m.data_preprocessor(_batch(0), True), mode='loss')
        sum(losses.values()).backward()
        grads = {n: p.grad.full_tensor() for n, p in m.student.named_parameters()
                 if p.grad is not None}
        results.append(({k: float(v.detach()) for k, v in losses.items()}, grads))
    (want, want_g), (got, got_g) = results
    assert counters['stats']['unique_graphs'] > 0  # the blocks did run compiled
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert set(got_g) == set(want_g)
    for k in want_g:
        torch.testing.assert_close(got_g[k], want_g[k], rtol=1e-4, atol=1e-6)
    convnext = DinoConvNeXt(arch='tiny', depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])
    assert compile_backbone_blocks(convnext) == [
        *(f'stages.{i}' for i in range(4)), *(f'downsample_layers.{i}' for i in range(4))]


def test_fp8_filter_converts_every_backbone_and_trains(group):
    """Official fp8_enabled / fp8_filter='blocks': the block linears of the student,
    teacher and Gram-teacher backbones compute in fp8; a training step stays finite."""
    from dino_mm.models.layers import FP8Linear
    from tests.models.algorithms.test_dinov3 import backbone_cfg, build
    from tests.pretrain.test_fsdp_fp16_gram import _batch
    model = build(backbone=backbone_cfg(embed_dim=64, num_heads=4,
                                        pos_embed_rope_rescale_coords=None))
    names = [n for n, _ in model.named_parameters()]
    strategy = DINOFSDPStrategy(mixed_precision='bf16', fp8_filter='blocks')
    shard_dino_model(model, mixed_precision=strategy.mixed_precision,
                     fp8_filter=strategy.fp8_filter)
    assert [n for n, _ in model.named_parameters()] == names
    for side in (model.student, model.teacher, model.gram_teacher):
        assert isinstance(side.backbone.blocks[0].mlp.fc2, FP8Linear)
    assert not isinstance(model.student.dino_head.mlp[0], FP8Linear)  # heads stay
    optim = torch.optim.AdamW(model.student.parameters(), lr=1e-3)
    from mmengine.optim import OptimWrapper
    before = model.student.backbone.blocks[0].mlp.fc1.weight.full_tensor().clone()
    logs = model.train_step(_batch(0), OptimWrapper(optim))
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in logs.values())
    assert not torch.equal(model.student.backbone.blocks[0].mlp.fc1.weight.full_tensor(),
                           before)


def test_a_sharded_stage_continues_the_sharded_previous_stage(tmp_path):
    """work_dirs/<stage>_fsdp continues <previous>_fsdp (a DCP folder) when that run exists,
    else the plain <previous> run; the error names what is missing."""
    from dino_mm.engine.hooks.stage_hooks import previous_stage_checkpoint

    def run(name, ckpt, folder=False):
        d = tmp_path / name
        d.mkdir()
        (d / ckpt).mkdir() if folder else (d / ckpt).write_bytes(b'x')
        (d / 'last_checkpoint').write_text(str(d / ckpt))
        return str(d / ckpt)

    here = str(tmp_path / 'stage2_fsdp')
    with pytest.raises(FileNotFoundError, match='stage1'):
        previous_stage_checkpoint(here, 'stage1')
    plain = run('stage1', 'iter_4.pth')
    assert previous_stage_checkpoint(here, 'stage1') == plain  # only the plain run exists
    sharded = run('stage1_fsdp', 'iter_8.pth', folder=True)
    assert previous_stage_checkpoint(here, 'stage1') == sharded  # the same variant wins
    assert previous_stage_checkpoint(str(tmp_path / 'stage2'), 'stage1') == plain
