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
    with pytest.raises(ValueError, match="'official'"):
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
    assert cfg.model.backbone.block_chunks == 4
    strategy = DINOFSDPStrategy(**{k: v for k, v in cfg.strategy.items() if k != 'type'})
    assert strategy.reshard_after_forward is False
