"""bf16 autocast training on CPU: dino_mm.BF16OptimWrapper and ``tools/train.py --amp``.

MMEngine's AmpOptimWrapper cannot be built without an accelerator; these tests check that
the bf16 wrapper really runs the DINOv2 forward (student and teacher backbones) in bf16
through the model's own ``train_step`` and through DINODistributedDataParallel, keeps fp32
parameters, updates them with finite losses, and that ``tools/train.py --amp`` on the demo
config trains with bf16 activations end to end.
"""
import importlib.util
import json
import logging
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.optim import OptimWrapper

from dino_mm.engine.optimizers import BF16OptimWrapper, cpu_amp_optim_wrapper_cfg

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(4, 16, dtype=torch.bool)
    masks[0, :3] = True
    idx = masks.flatten().nonzero().flatten()
    return dict(collated_global_crops=torch.randn(4, 3, 32, 32, generator=g),
                collated_local_crops=torch.randn(4, 3, 16, 16, generator=g),
                collated_masks=masks, mask_indices_list=idx,
                masks_weight=torch.full((3, ), 1 / 3), n_masked_patches=torch.tensor([3]),
                upperbound=3)


def _tiny():
    sys.path.insert(0, osp.join(ROOT, 'tests', 'engine'))
    from tiny_models import tiny_dino
    return tiny_dino()


def _first_qkv(backbone):
    """The qkv projection of the first block (flat or chunked block lists)."""
    return next(m for n, m in backbone.named_modules() if n.endswith('attn.qkv'))


def _train_step_dtypes(model, optim, step):
    seen = []
    handles = [_first_qkv(getattr(model, s)['backbone']).register_forward_hook(
        lambda mod, inp, out, s=s: seen.append((s, out.dtype))) for s in ('student', 'teacher')]
    try:
        log_vars = step(_batch(), optim)
    finally:
        for h in handles:
            h.remove()
    return seen, log_vars


@pytest.mark.parametrize('wrapper', ['bf16', 'fp32'])
def test_dinov2_train_step_runs_bf16_under_the_wrapper(wrapper):
    model = _tiny()
    params = list(model.student.parameters())
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.1)
    optim = (BF16OptimWrapper(optimizer=optimizer, device_type='cpu') if wrapper == 'bf16'
             else OptimWrapper(optimizer=optimizer))
    seen, log_vars = _train_step_dtypes(model, optim, model.train_step)
    want = torch.bfloat16 if wrapper == 'bf16' else torch.float32
    assert {s for s, _ in seen} == {'student', 'teacher'}
    assert all(dtype == want for _, dtype in seen), seen
    assert all(torch.isfinite(v).all() for v in log_vars.values()), log_vars
    assert all(p.dtype == torch.float32 for p in params)
    assert any(not torch.equal(p, b) for p, b in zip(params, before))  # a real step


def test_ddp_wrapper_train_step_runs_bf16(group):
    from dino_mm.engine.model_wrappers import DINODistributedDataParallel
    model = _tiny()
    ddp = DINODistributedDataParallel(module=model, device_ids=None, broadcast_buffers=False)
    optim = BF16OptimWrapper(optimizer=torch.optim.SGD(model.student.parameters(), lr=0.1),
                             device_type='cpu')
    seen, log_vars = _train_step_dtypes(model, optim, ddp.train_step)
    assert seen and all(dtype == torch.bfloat16 for _, dtype in seen), seen
    assert torch.isfinite(log_vars['loss'])


def test_state_dict_is_that_of_a_plain_optim_wrapper():
    lin = torch.nn.Linear(2, 2)
    optim = BF16OptimWrapper(optimizer=torch.optim.SGD(lin.parameters(), lr=0.1),
                             device_type='cpu')
    assert 'loss_scaler' not in optim.state_dict()
    assert optim.cast_dtype == torch.bfloat16


def test_warns_when_the_cpu_emulates_bf16(monkeypatch, tmp_path):
    import dino_mm.utils.precision as precision
    monkeypatch.setattr(precision, 'cpu_bf16_flags', lambda: ())
    monkeypatch.setattr(precision, '_logged', set())
    logger = MMLogger.get_instance('test_bf16_wrapper_warning',
                                   log_file=str(tmp_path / 'log.txt'))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        BF16OptimWrapper(optimizer=torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1),
                         device_type='cpu')
    finally:
        logger.removeHandler(handler)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any('SLOWER than fp32' in w and 'avx512_bf16' in w for w in warnings), warnings


def test_cpu_amp_config_conversion():
    cfg = dict(type='mmengine.AmpOptimWrapper', loss_scale='dynamic', dtype='bfloat16',
               optimizer=dict(type='AdamW', lr=1e-3), clip_grad=dict(max_norm=1.0),
               constructor='dino_mm.LayerDecayOptimWrapperConstructor')
    out = cpu_amp_optim_wrapper_cfg(cfg)
    assert out == dict(type='dino_mm.BF16OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3),
                       clip_grad=dict(max_norm=1.0),
                       constructor='dino_mm.LayerDecayOptimWrapperConstructor')
    assert cfg['type'] == 'mmengine.AmpOptimWrapper'  # the input is left as it was
    with pytest.raises(ValueError, match=r"optim_wrapper.type.*'OptimWrapperDict'"):
        cpu_amp_optim_wrapper_cfg(dict(type='OptimWrapperDict'))
    with pytest.raises(ValueError, match=r"optim_wrapper.dtype='fp8'"):
        cpu_amp_optim_wrapper_cfg(dict(type='OptimWrapper', dtype='fp8'))


# Imported by the training subprocess through `custom_imports`: records the output dtype
# of the first attention projection of the student and teacher backbones, and the losses.
HOOK_MODULE = '''
import json
import os

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RecordQKVDtypeHook(Hook):
    def before_train(self, runner):
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        self.seen = []
        for side in ('student', 'teacher'):
            qkv = getattr(model, side)['backbone'].blocks[0].attn.qkv
            qkv.register_forward_hook(
                lambda m, i, o, side=side: self.seen.append([side, str(o.dtype)]))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        with open(os.environ['QKV_DTYPE_FILE'], 'a') as f:
            f.write(json.dumps(dict(
                seen=self.seen, wrapper=type(runner.optim_wrapper).__name__,
                losses={k: float(v) for k, v in outputs.items()})) + '\\n')
        self.seen = []
'''


def test_train_tool_amp_on_cpu_trains_the_demo_config_in_bf16(tmp_path):
    sys.path.insert(0, osp.join(ROOT, 'tools', 'dataset_converters'))
    from make_digits_dataset import make_digits_dataset

    from dino_mm.datasets import dump_imagenet_extra
    root = str(tmp_path / 'digits')
    make_digits_dataset(root, size=16)
    dump_imagenet_extra(root, osp.join(root, 'extra'), splits=('TRAIN', ))
    (tmp_path / 'qkv_dtype_hook.py').write_text(HOOK_MODULE)
    config = tmp_path / 'amp_demo.py'
    config.write_text(
        f"_base_ = [{osp.join(ROOT, 'configs', 'demo', 'dinov2_vit-tiny_digits.py')!r}]\n"
        "custom_imports = dict(imports=['qkv_dtype_hook'], allow_failed_imports=False)\n"
        "custom_hooks = _base_.custom_hooks + [dict(type='RecordQKVDtypeHook')]\n")
    record = tmp_path / 'dtypes.jsonl'
    options = [
        f'data_root={root}', f'train_dataloader.dataset.data_root={root}',
        'model.backbone.patch_size=4', 'model.backbone.img_size=16',
        'model.backbone.embed_dim=32', 'model.backbone.depth=2', 'model.backbone.num_heads=2',
        'model.dino_head.out_dim=64', 'model.dino_head.hidden_dim=32',
        'model.dino_head.bottleneck_dim=16', 'train_dataloader.batch_size=4',
        'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
        'train_dataloader.collate_fn.patch_size=4',
        'train_dataloader.dataset.pipeline.1.global_crops_size=16',
        'train_dataloader.dataset.pipeline.1.local_crops_size=8',
        'train_cfg.max_iters=2', 'param_scheduler.0.total_iters=2',
        'param_scheduler.0.warmup_iters=1', 'param_scheduler.0.freeze_last_layer_iters=0',
        'param_scheduler.1.total_iters=2', 'custom_hooks.0.warmup_iters=1',
        'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1']
    # CUDA hidden: the CPU path is under test, also on a machine with a GPU.
    env = dict(os.environ, OMP_NUM_THREADS='1', QKV_DTYPE_FILE=str(record),
               PYTHONPATH=os.pathsep.join([ROOT, str(tmp_path)]), CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'train.py'), str(config), '--amp',
         '--work-dir', str(tmp_path / 'work'), '--cfg-options', *options],
        cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    iters = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(iters) == 2
    for it in iters:
        assert it['wrapper'] == 'BF16OptimWrapper'
        assert {s for s, _ in it['seen']} == {'student', 'teacher'}
        assert all(dtype == 'torch.bfloat16' for _, dtype in it['seen']), it['seen']
        assert all(v == v and abs(v) != float('inf') for v in it['losses'].values())
    assert 'running in bf16 on cpu' in proc.stdout + proc.stderr


def test_train_tool_merge_args_keeps_fp16_amp_on_gpus(monkeypatch):
    """With an accelerator, --amp stays MMEngine's AmpOptimWrapper (fp16, dynamic scale)."""
    spec = importlib.util.spec_from_file_location('dino_mm_train_tool_amp',
                                                  osp.join(ROOT, 'tools', 'train.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    config = osp.join(ROOT, 'configs', 'demo', 'dinov2_vit-tiny_digits.py')
    import mmengine.device
    for device, want in (('cpu', 'dino_mm.BF16OptimWrapper'), ('cuda', 'AmpOptimWrapper')):
        monkeypatch.setattr(mmengine.device, 'get_device', lambda device=device: device)
        cfg = tool.merge_args(Config.fromfile(config),
                              tool.parse_args([config, '--amp', '--work-dir', 'unused']))
        assert cfg.optim_wrapper.type == want
        assert ('loss_scale' in cfg.optim_wrapper) == (device == 'cuda')
        assert cfg.optim_wrapper.constructor == 'dino_mm.LayerDecayOptimWrapperConstructor'
