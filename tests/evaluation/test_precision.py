"""bf16 feature extraction: the precision helper, the evaluation models, k-NN accuracy
kept within a point of fp32 on the digits, and ``tools/test.py --amp``."""
import os.path as osp
import sys

import numpy as np
import pytest
import torch
from mmengine.dataset import DefaultSampler, pseudo_collate
from mmengine.model import ImgDataPreprocessor
from torch.utils.data import DataLoader, TensorDataset

from dino_mm.evaluation import FrozenFeatureModel, LinearProbeGrid, extract_features
from dino_mm.evaluation.knn import knn_evaluate
from dino_mm.utils import precision as P

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_check_precision_names_and_aliases():
    assert [P.check_precision(v) for v in ('auto', 'FP32', 'bfloat16', torch.float16, None)] \
        == ['auto', 'fp32', 'bf16', 'fp16', 'fp32']
    with pytest.raises(ValueError, match=r"model.precision='bf32' is not a precision.*'auto'"):
        P.check_precision('bf32', 'model.precision')


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / 'x86'
    x86.write_text('processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_bf16\n\n'
                   'processor\t: 1\nflags\t\t: fpu sse avx512f avx512_bf16 amx_bf16\n')
    arm = tmp_path / 'arm'
    arm.write_text('processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n')
    old = tmp_path / 'old'
    old.write_text('processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n')
    assert P.cpu_bf16_flags(str(x86)) == ('avx512_bf16', 'amx_bf16')
    assert P.cpu_bf16_flags(str(arm)) == ('bf16', )
    assert P.cpu_bf16_flags(str(old)) == ()
    assert P.cpu_bf16_flags(str(tmp_path / 'missing')) == ()


@pytest.mark.parametrize('flags,want', [(('avx512_bf16', ), 'bf16'), ((), 'fp32')])
def test_auto_follows_the_cpu(monkeypatch, flags, want):
    monkeypatch.setattr(P, 'cpu_bf16_flags', lambda: flags)
    assert P.resolve_precision('auto', 'cpu') == want
    assert P.resolve_precision('bf16', 'cpu') == 'bf16'  # explicit wins (with a warning)
    assert P.resolve_precision('fp32', torch.device('cpu')) == 'fp32'
    with pytest.raises(ValueError, match="'fp16' is for CUDA; on CPU use 'bf16'"):
        P.resolve_precision('fp16', 'cpu', owner='X')


def test_autocast_region_and_explicit_fp32_inside_an_outer_autocast():
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with P.precision_autocast('bf16', 'cpu') as used:
        assert used == 'bf16' and lin(x).dtype == torch.bfloat16
    with torch.autocast('cpu', dtype=torch.bfloat16):
        with P.precision_autocast('fp32', 'cpu'):
            assert lin(x).dtype == torch.float32


def _model(precision, cls=FrozenFeatureModel, vit=None, **kw):
    from .conftest import tiny_vit
    return cls(tiny_vit(**(vit or {})), precision=precision, **kw,
               data_preprocessor=ImgDataPreprocessor(mean=[127.5] * 3, std=[127.5] * 3))


def _qkv_dtypes(backbone):
    seen = []
    backbone.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


def test_models_run_the_backbone_in_their_precision_and_return_fp32(digits):
    images = digits[0][:4] * 2 - 1
    for precision, want in (('bf16', torch.bfloat16), ('fp32', torch.float32)):
        frozen = _model(precision)
        seen = _qkv_dtypes(frozen.backbone)
        assert frozen.extract_feat(images).dtype == torch.float32
        probe = _model(precision, LinearProbeGrid, num_classes=10, learning_rates=(0.1, ))
        seen_probe = _qkv_dtypes(probe.backbone)
        layers = probe.extract_feat(images)
        assert all(t.dtype == torch.float32 for pair in layers for t in pair)
        assert seen == [want] and seen_probe == [want]
    with pytest.raises(ValueError, match="FrozenFeatureModel: precision='half-ish'"):
        _model('half-ish')


def test_knn_top1_bf16_within_one_point_of_fp32_on_digits(digits):
    """The demo's digits (all 1,797 images, the split of make_digits_dataset: 80 % train,
    stratified, seed 0) through the real extraction path, random-init 4-block ViT (D=128).

    Tolerance: 1 point of top-1 (3.6 of the 359 test images). bf16 moves the features by
    ~0.5 % (relative L2), which flips near-tie votes only: over four random inits of this
    ViT, k=10 and k=20 moved by at most 0.56 points (2 images); a 32-wide ViT, whose
    random features are closer to each other, moved up to 1.4 points. bf16 must really
    have run: the features differ from fp32, by far less than their scale.
    """
    from .conftest import DigitsDataset
    images, labels = digits
    ds = DigitsDataset(images, labels)
    loader = DataLoader(ds, batch_size=256, collate_fn=pseudo_collate,
                        sampler=DefaultSampler(ds, shuffle=False))
    rng = np.random.RandomState(0)  # make_digits_dataset's stratified split
    is_val = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels.numpy()):
        idx = np.flatnonzero(labels.numpy() == c)
        rng.shuffle(idx)
        is_val[idx[:int(round(len(idx) * 0.2))]] = True
    val, train = torch.from_numpy(is_val), torch.from_numpy(~is_val)
    results, feats = {}, {}
    for precision in ('fp32', 'bf16'):
        f, y = extract_features(_model(precision, vit=dict(embed_dim=128, num_heads=4)),
                                loader, progress=False)
        assert f.dtype == torch.float32
        feats[precision] = f
        results[precision] = knn_evaluate(f[train], y[train], f[val], y[val], ks=(10, 20),
                                          topk=(1, ))
    diff = (feats['bf16'] - feats['fp32']).abs().max()
    assert 0 < diff < 0.1 * feats['fp32'].abs().max()
    for k in ('10nn_top1', '20nn_top1'):
        assert results['fp32'][k] > 40  # far above chance (10 %): the features carry signal
        assert abs(results['bf16'][k] - results['fp32'][k]) <= 1.0, results


def test_extract_features_precision_argument_wraps_a_plain_module(digits):
    from .conftest import tiny_vit
    backbone = tiny_vit()
    seen = _qkv_dtypes(backbone)
    x = digits[0][:6] * 2 - 1
    data = DataLoader(TensorDataset(x, digits[1][:6], torch.arange(6)), batch_size=6)
    f32, _ = extract_features(backbone, data, precision='fp32', progress=False)
    f16, _ = extract_features(backbone, data, precision='bf16', progress=False)
    assert seen == [torch.float32, torch.bfloat16] and f16.dtype == torch.float32
    torch.testing.assert_close(f16, f32, atol=0.1, rtol=0.05)


# --------------------------------------------------------------------- tools/test.py --amp
def test_feature_eval_loop_fp16_covers_the_training_features(tmp_path, digits):
    """test_cfg.fp16 (MMEngine's mechanism: bf16 on CPU) applies to the training-feature
    pass of FeatureEvalTestLoop as to the test pass, for a model with no own precision."""
    from mmengine.runner import Runner

    from .conftest import DigitsDataset

    class PlainFeatureModel(FrozenFeatureModel):
        def extract_feat(self, inputs):  # no autocast region of its own
            return self.backbone(inputs).float()

    images, labels = digits
    model = _model('fp32', PlainFeatureModel)
    seen = _qkv_dtypes(model.backbone)
    loader = dict(batch_size=64, num_workers=0, collate_fn=dict(type='pseudo_collate'),
                  sampler=dict(type='DefaultSampler', shuffle=False))
    runner = Runner(
        model=model, work_dir=str(tmp_path), default_scope='dino_mm',
        test_dataloader=dict(dataset=DigitsDataset(images[100:164], labels[100:164]),
                             **loader),
        test_cfg=dict(type='dino_mm.FeatureEvalTestLoop', fp16=True, train_dataloader=dict(
            dataset=DigitsDataset(images[:100], labels[:100]), **loader)),
        test_evaluator=dict(type='dino_mm.KNNMetric', ks=(5, )))
    runner.test()
    assert seen == [torch.bfloat16] * 3  # 2 training batches, then 1 test batch


def test_apply_test_amp_sets_the_loop_and_the_model(monkeypatch):
    from mmengine.config import Config

    from dino_mm.engine.config_checks import ConfigError
    from dino_mm.engine.runner_utils import apply_test_amp
    cfg = Config.fromfile(osp.join(REPO, 'configs/eval/knn/dinov2-vits14_knn_8xb256_in1k.py'))
    assert apply_test_amp(cfg, 'cpu') == 'bf16'
    assert cfg.test_cfg.fp16 is True and cfg.model.precision == 'bf16'
    cfg = Config(dict(model=dict(type='SomeSegmentor'), test_cfg=dict(type='TestLoop')))
    assert apply_test_amp(cfg, 'cpu') == 'bf16'
    assert cfg.test_cfg.fp16 is True and 'precision' not in cfg.model
    with pytest.raises(ConfigError, match='no test_cfg'):
        apply_test_amp(Config(dict(model=dict(type='X'))), 'cpu')

    class NoFp16Loop:
        def __init__(self, runner, dataloader, evaluator):
            pass

    with pytest.raises(ConfigError, match='takes no fp16 argument'):
        apply_test_amp(Config(dict(model={}, test_cfg=dict(type=NoFp16Loop))), 'cpu')


def test_test_tool_amp_runs_the_knn_eval_in_bf16(tmp_path):
    """``tools/test.py CONFIG BACKBONE --amp`` on the digits in the ImageNet layout, with a
    config that asks for fp32: training and test features come from bf16 backbones."""
    import importlib.util

    from dino_mm.datasets import dump_imagenet_extra
    sys.path.insert(0, osp.join(REPO, 'tools', 'dataset_converters'))
    from make_digits_dataset import make_digits_dataset

    from .conftest import tiny_vit
    root = str(tmp_path / 'digits')
    make_digits_dataset(root, size=28)
    dump_imagenet_extra(root, osp.join(root, 'extra'), splits=('TRAIN', 'VAL'))
    backbone = tiny_vit()
    ckpt = tmp_path / 'backbone.pth'
    torch.save(backbone.state_dict(), ckpt)
    config = tmp_path / 'knn_fp32.py'
    base = osp.join(REPO, 'configs/eval/knn/dinov2-vits14_knn_8xb256_in1k.py')
    config.write_text(f"_base_ = [{base!r}]\nmodel = dict(precision='fp32')\n")
    small = ['dataset.pipeline.1.scale=28', 'dataset.pipeline.2.crop_size=28',
             'batch_size=512', 'num_workers=0', 'persistent_workers=False',
             f'dataset.data_root={root}']
    opts = [f'{loader}.{o}' for loader in ('test_dataloader', 'test_cfg.train_dataloader')
            for o in small]
    opts += [f'model.backbone.{k}={v}' for k, v in dict(
        depth=backbone.n_blocks, embed_dim=backbone.embed_dim,
        num_heads=backbone.blocks[0].attn.num_heads, img_size=28).items()]
    spec = importlib.util.spec_from_file_location('dino_mm_test_tool_amp',
                                                  osp.join(REPO, 'tools', 'test.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    seen = []

    def record(module, inputs, output):
        if type(module).__name__ == 'Linear' and torch.is_tensor(output):
            seen.append(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        metrics = tool.main([str(config), str(ckpt), '--amp', '--work-dir',
                             str(tmp_path / 'work'), '--cfg-options',
                             'test_evaluator.ks=[10,20]', *opts])
    finally:
        handle.remove()
    # 1,437 training + 360 test images in batches of 512: 3 + 1 backbone passes, each with
    # 4 blocks x 4 Linear layers, all in bf16.
    assert len(seen) == 4 * 16 and set(seen) == {torch.bfloat16}, set(seen)
    assert 10.0 < metrics['knn/10nn_top1'] <= 100.0
