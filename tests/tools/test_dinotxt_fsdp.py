"""dino.txt under FSDP2: dino_mm.DINOFSDPStrategy with the units of ``DINOTxt.fsdp_units()``.

* in one process (a 1-rank gloo group): what is sharded (the text tower, the vision head),
  what stays replicated (the frozen vision backbone, ``logit_scale``), a DCP round trip of
  a heads-only state, and the mixed-precision keys checked against the units;
* through ``tools/dist_train.sh`` (FlexibleRunner, 2 gloo ranks x 8 pairs, fp32): the same
  weights as one unsharded process with the 16-pair global batch, and a run stopped at
  iteration 2 and resumed (``--resume``) to 4 equal to an uninterrupted one.
"""
import os.path as osp
import shutil
import subprocess

import pytest
import torch
import torch.distributed as dist

from dino_mm.engine.checkpoint import safe_torch_load
from dino_mm.engine.fsdp import read_sharded_state_dict

from tests.tools.test_dinotxt_journey import CONFIG, PY, ROOT, _opts, _run

FSDP_CFG = 'configs/dinotxt/dinov3-vitl16_dinotxt-tet1280d20h24l_b256-50k_coco-captions_fsdp.py'
# FlexibleRunner + the strategy in fp32, on the demo config (which has no runner_type yet:
# '+' adds the keys, see tools/train.py's --cfg-options checks)
FSDP_OPTS = ['+runner_type=FlexibleRunner', '+strategy.type=dino_mm.DINOFSDPStrategy',
             '+strategy.mixed_precision=None', '+model_wrapper_cfg=None']


def _tiny_dinotxt(seed=0, **overrides):
    from mmengine.config import Config

    from dino_mm.models.text import DINOTxt
    cfg = Config.fromfile(CONFIG)
    cfg.model.pop('type')
    cfg.model.vision_backbone.img_size = 16
    cfg.model.update(overrides)
    torch.manual_seed(seed)
    return DINOTxt(**cfg.model)


def test_units_sharded_backbone_and_logit_scale_replicated(group, tmp_path):
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
    from torch.distributed.tensor import DTensor

    from dino_mm.engine.fsdp import load_sharded_checkpoint, save_sharded_checkpoint, shard_dino_model
    model = _tiny_dinotxt(save_frozen_backbone=False)
    names = [n for n, _ in model.named_parameters()]
    units = [n for n, _ in model.fsdp_units()]
    assert units[-2:] == ['text_model', 'visual_model.head']
    assert 'text_model.backbone.blocks.1' in units and 'visual_model.head.blocks.0' in units
    assert not any(n.startswith('visual_model.backbone') for n in units)
    shard_dino_model(model, mixed_precision=None)
    assert [n for n, _ in model.named_parameters()] == names  # optimizer rules see these
    for name, p in model.named_parameters():
        sharded = isinstance(p, DTensor)
        assert sharded == name.startswith(('text_model.', 'visual_model.head.')), name
    # the checkpoint holds the heads and logit_scale, not the frozen backbone
    path = str(tmp_path / 'iter_1.pth')
    save_sharded_checkpoint(path, {'model': get_model_state_dict(model)}, {'meta': {}})
    saved = read_sharded_state_dict(path)
    assert 'logit_scale' in saved and not any(k.startswith('visual_model.backbone.') for k in saved)
    # loaded into a differently initialised model: trainable weights from the file, the
    # backbone kept from the build (the load pre-hook fills it in)
    other = _tiny_dinotxt(seed=1, save_frozen_backbone=False)
    backbone = {k: v.clone() for k, v in other.visual_model.backbone.state_dict().items()}
    other.mark_backbone_loaded('the build')  # as backbone_checkpoint would
    shard_dino_model(other, mixed_precision=None)
    state = {'model': get_model_state_dict(other)}
    load_sharded_checkpoint(path, state)
    set_model_state_dict(other, state['model'])
    torch.testing.assert_close(other.logit_scale.detach(), model.logit_scale.detach())
    w = 'text_model.head.linear_projection.weight'
    torch.testing.assert_close(other.get_parameter(w).full_tensor(), model.get_parameter(w).full_tensor())
    for k, v in other.visual_model.backbone.state_dict().items():
        assert torch.equal(v, backbone[k]), k


def test_mixed_precision_keys_are_unit_prefixes(group):
    from mmengine.config import Config

    from dino_mm.engine.fsdp import DEFAULT_MIXED_PRECISION, DINOFSDPStrategy, shard_dino_model
    with pytest.raises(KeyError, match='covers no FSDP unit'):
        shard_dino_model(_tiny_dinotxt(), mixed_precision=DEFAULT_MIXED_PRECISION)
    model = _tiny_dinotxt()
    cfg = Config.fromfile(osp.join(ROOT, FSDP_CFG))
    assert cfg.runner_type == 'FlexibleRunner' and cfg.model_wrapper_cfg is None
    strategy = DINOFSDPStrategy(**{k: v for k, v in cfg.strategy.items() if k != 'type'})
    shard_dino_model(model, mixed_precision=strategy.mixed_precision)
    seen = {}

    def recorder(key):
        def hook(module, args, out):
            seen[key] = out.dtype  # returns None: the output is kept
        return hook

    model.text_model.backbone.blocks[0].register_forward_hook(recorder('text'))
    model.visual_model.head.blocks_list[0].register_forward_hook(recorder('head'))
    feats = model.visual_model(torch.randn(2, 3, 16, 16))[0]
    model.encode_text(['an image of the digit 1.'])
    assert seen == {'text': torch.bfloat16, 'head': torch.bfloat16}
    assert torch.isfinite(feats.float()).all()
    assert model.logit_scale.dtype == torch.float32


def _fsdp_train(work_dir, roots, max_iters, env, extra=(), resume=False):
    args = ['bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir', work_dir,
            *(['--resume'] if resume else []),
            *_opts(*roots, max_iters, ['train_dataloader.batch_size=8', *FSDP_OPTS, *extra])]
    return _run(args, env)


@pytest.fixture(scope='module')
def shared(tmp_path_factory):
    """Runs the resume test reuses from the parity test (it makes them when run alone)."""
    return tmp_path_factory.mktemp('dinotxt_fsdp')


def _init_checkpoint(shared):
    """One set of initial weights for every run: Runner and FlexibleRunner build and
    initialise the model at different RNG states (the random demo backbone too)."""
    path = str(shared / 'init.pth')
    if not osp.exists(path):
        torch.save({'state_dict': _tiny_dinotxt().state_dict()}, path)
    return [f'load_from={path}']


@pytest.mark.dist
def test_two_fsdp_ranks_equal_one_process_with_the_global_batch(
        shared, captions_root, digits_root, tool_env, free_port):
    """2 gloo ranks x 8 pairs under FSDP2 == 1 unsharded process x 16 pairs (same sampler
    split as the DDP test in test_dinotxt_journey.py)."""
    roots = (captions_root, digits_root)
    init = _init_checkpoint(shared)
    one, two = str(shared / 'one'), str(shared / 'two')
    log = str(shared / 'one.log')
    with open(log, 'w') as f:  # a file, not a pipe: nobody reads it while the ranks run
        ref = subprocess.Popen([PY, 'tools/train.py', CONFIG, '--work-dir', one,
                                *_opts(*roots, 2, init)], cwd=ROOT, env=tool_env, stdout=f,
                               stderr=subprocess.STDOUT)
        p = _fsdp_train(two, roots, 2, dict(tool_env, PORT=free_port, PYTHON=PY), init)
        ref.wait(timeout=600)
    assert ref.returncode == 0, open(log).read()[-3000:]
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
    a = safe_torch_load(osp.join(one, 'iter_2.pth'))['state_dict']
    b = read_sharded_state_dict(osp.join(two, 'iter_2.pth'))
    assert a.keys() == b.keys()
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=1e-4, atol=1e-5, msg=k)
    # and it trained: logit_scale (replicated, gradient averaged by the strategy) moved
    start = torch.load(osp.join(shared, 'init.pth'), weights_only=True)['state_dict']
    assert not torch.allclose(b['logit_scale'], start['logit_scale'], atol=1e-6)
    # AdamW's first step barely depends on the gradient's size, so the weights alone would
    # not show a rank-local logit_scale gradient (1e-4 apart); its moments do (50 % apart).
    # It is the only one-element parameter: its entry in the plain optimizer state.
    ref_state = safe_torch_load(osp.join(one, 'iter_2.pth'))['optimizer']['state'].values()
    (ref_moments, ) = [s for s in ref_state if s['exp_avg'].numel() == 1]
    optim = read_sharded_state_dict(osp.join(two, 'iter_2.pth'), prefix='optim.')
    for k in ('exp_avg', 'exp_avg_sq'):
        torch.testing.assert_close(optim[f'state.logit_scale.{k}'], ref_moments[k], rtol=1e-4,
                                   atol=1e-7, msg=k)


@pytest.mark.dist
def test_fsdp_resume_equals_uninterrupted_run(shared, captions_root, digits_root, tool_env,
                                              free_port):
    """2 iterations, stop, --resume to 4 == 4 uninterrupted iterations (2 ranks each)."""
    roots = (captions_root, digits_root)
    init = _init_checkpoint(shared)
    env = dict(tool_env, PORT=free_port, PYTHON=PY)
    stopped = str(shared / 'two')
    if not osp.exists(osp.join(stopped, 'iter_2.pth')):  # this test run on its own
        p = _fsdp_train(stopped, roots, 2, env, init)
        assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
    part, full = str(shared / 'part'), str(shared / 'full')
    shutil.copytree(stopped, part)
    with open(osp.join(part, 'last_checkpoint'), 'w') as f:  # the copy, not the original
        f.write(osp.join(part, 'iter_2.pth'))
    p = _fsdp_train(full, roots, 4, env, init)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
    p = _fsdp_train(part, roots, 4, env, resume=True)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
    assert 'resumed epoch: 0, iter: 2' in p.stdout + p.stderr
    a = read_sharded_state_dict(osp.join(full, 'iter_4.pth'))
    b = read_sharded_state_dict(osp.join(part, 'iter_4.pth'))
    assert a.keys() == b.keys()
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=0, atol=1e-6, msg=k)
    opt_a = read_sharded_state_dict(osp.join(full, 'iter_4.pth'), prefix='optim.')
    opt_b = read_sharded_state_dict(osp.join(part, 'iter_4.pth'), prefix='optim.')
    assert opt_a.keys() == opt_b.keys() and 'state.logit_scale.exp_avg' in opt_a
    for k, v in opt_a.items():
        torch.testing.assert_close(opt_b[k], v, rtol=0, atol=1e-6, msg=k)
