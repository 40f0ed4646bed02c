"""Task-head hub entries (``*_lc``, ``*_ld``, ``*_dd``, segmentors, ``dinov3_vit7b16_de``)
default like the official hub and like the backbone entries: ``pretrained=None`` loads the
official head and backbone files when both are on this machine and otherwise warns loudly
(naming every missing file) and returns the random init; ``pretrained=True`` makes a missing
file an error; ``pretrained=False`` is silent. Files are found by the one resolver of
:mod:`dino_mm.hub.utils`, in a temporary ``$DINO_MM_WEIGHTS`` here.
"""
import importlib.util
import inspect
import os.path as osp
import warnings

import pytest
import torch

import dino_mm.hub as hub

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
V3_7B_BACKBONE = 'dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth'

# Every task-head entry -> the files its default needs (official names, docs/reference.md §2.4).
EXPECTED_FILES = {
    'dinov3_vit7b16_lc': ['dinov3_vit7b16_imagenet1k_linear_head-90d8ed92.pth',
                          V3_7B_BACKBONE],
    'dinov3_vit7b16_dd': ['dinov3_vit7b16_synthmix_dpt_head-02040be1.pth', V3_7B_BACKBONE],
    'dinov2_vitg14_ade20k_m2f': ['dinov2_vitg14_ade20k_m2f.pth'],
    'dinov3_vit7b16_ms': ['dinov3_vit7b16_ade20k_m2f_head-bf307cb1.pth', V3_7B_BACKBONE],
    'dinov3_vit7b16_de': ['dinov3_vit7b16_coco2017_detr_head-b0235ff7.pth', V3_7B_BACKBONE],
}
for _s in 'sblg':
    _base = f'dinov2_vit{_s}14'
    for _reg, _full in (('', _base), ('_reg', _base + '_reg4')):
        EXPECTED_FILES[f'{_base}{_reg}_lc'] = [f'{_full}_linear4_head.pth',
                                               f'{_full}_pretrain.pth']
    EXPECTED_FILES[f'{_base}_ld'] = [f'{_base}_nyu_linear4_head.pth', f'{_base}_pretrain.pth']
    EXPECTED_FILES[f'{_base}_dd'] = [f'{_base}_nyu_dpt_head.pth', f'{_base}_pretrain.pth']
    for _ds in ('ade20k', 'voc2012'):
        for _head in ('linear', 'ms'):
            EXPECTED_FILES[f'{_base}_{_ds}_{_head}'] = [f'{_base}_{_ds}_{_head}_head.pth',
                                                        f'{_base}_pretrain.pth']
NEEDS = {'dinov3_vit7b16_de': 'mmdet.models', 'dinov2_vitg14_ade20k_m2f': 'mmdet.models',
         'dinov3_vit7b16_ms': 'mmdet.models'}


def _need(name):
    if name in NEEDS or '_ade20k_' in name or '_voc2012_' in name:
        from tests.oracles import require
        require(NEEDS.get(name, 'mmseg.models'))


def _random_warnings(record):
    return [str(w.message) for w in record
            if issubclass(w.category, UserWarning) and 'RANDOM' in str(w.message)]


def _call_recording(fn, **kwargs):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter('always')
        model = fn(**kwargs)
    return model, _random_warnings(record)


def _randomised(state):
    """A copy of ``state`` whose float tensors are fresh random values."""
    return {k: torch.randn_like(v) if v.is_floating_point() else v.clone()
            for k, v in state.items()}


def _assert_state_equal(model, expected):
    state = model.state_dict()
    assert set(expected) <= set(state)
    for k, v in expected.items():
        assert torch.equal(state[k], v), k


def test_hubconf_exposes_every_task_entry_with_the_official_default():
    spec = importlib.util.spec_from_file_location('hubconf', osp.join(REPO_ROOT, 'hubconf.py'))
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = {n for n in dir(hubconf) if not n.startswith('_') and callable(getattr(hubconf, n))
               and 'pretrained' in inspect.signature(getattr(hubconf, n)).parameters}
    assert set(EXPECTED_FILES) <= entries, sorted(set(EXPECTED_FILES) - entries)
    for name in sorted(entries):
        default = inspect.signature(getattr(hubconf, name)).parameters['pretrained'].default
        assert default is None, f'{name}: pretrained defaults to {default!r}, not None'


@pytest.mark.parametrize('name', sorted(EXPECTED_FILES))
def test_pretrained_true_without_files_names_every_file(name, weights_dir):
    _need(name)
    # meta: an entry that built its (full-size) model before resolving would still be cheap
    with torch.device('meta'), pytest.raises(FileNotFoundError) as err:
        getattr(hub, name)(pretrained=True)
    text = str(err.value)
    for file_name in EXPECTED_FILES[name]:
        assert file_name in text, (file_name, text)
    assert str(weights_dir) in text and 'never downloads' in text


@pytest.mark.parametrize('name', sorted(EXPECTED_FILES))
def test_default_without_files_warns_random_and_returns_the_model(name, weights_dir):
    """Full-size architectures, built on the meta device (no memory, no weights)."""
    _need(name)
    with torch.device('meta'):
        model, loud = _call_recording(getattr(hub, name))
        silent, quiet = _call_recording(getattr(hub, name), pretrained=False)
    assert isinstance(model, torch.nn.Module) and isinstance(silent, torch.nn.Module)
    assert len(loud) == 1, loud
    for file_name in EXPECTED_FILES[name]:
        assert file_name in loud[0], (file_name, loud[0])
    assert str(weights_dir) in loud[0]
    assert quiet == []


# ------------------------------------------------------ official-named files load by default
LC_TINY = dict(depth=4, embed_dim=32, num_heads=2, img_size=28)


def test_lc_default_loads_both_files_and_needs_both(weights_dir):
    src = hub.dinov2_vits14_lc(pretrained=False, **LC_TINY)
    head = _randomised(src.linear_head.state_dict())
    backbone = _randomised(src.backbone.state_dict())
    torch.save(head, weights_dir / 'dinov2_vits14_linear4_head.pth')
    torch.save(backbone, weights_dir / 'dinov2_vits14_pretrain.pth')
    model, loud = _call_recording(
        torch.hub.load, repo_or_dir=REPO_ROOT, model='dinov2_vits14_lc', source='local',
        **LC_TINY)
    assert loud == []
    _assert_state_equal(model, {'linear_head.' + k: v for k, v in head.items()})
    _assert_state_equal(model, {'backbone.' + k: v for k, v in backbone.items()})
    # One of the two files missing: the default loads neither and names the missing one.
    (weights_dir / 'dinov2_vits14_pretrain.pth').unlink()
    model, loud = _call_recording(hub.dinov2_vits14_lc, **LC_TINY)
    assert len(loud) == 1 and 'dinov2_vits14_pretrain.pth' in loud[0]
    assert 'dinov2_vits14_linear4_head.pth' not in loud[0]
    assert not torch.equal(model.linear_head.weight, head['weight'])
    with pytest.raises(FileNotFoundError, match='dinov2_vits14_pretrain.pth'):
        hub.dinov2_vits14_lc(pretrained=True, **LC_TINY)
    # An explicit head path is always loaded; the missing backbone alone is random.
    model, loud = _call_recording(
        hub.dinov2_vits14_lc, weights=str(weights_dir / 'dinov2_vits14_linear4_head.pth'),
        **LC_TINY)
    assert torch.equal(model.linear_head.weight, head['weight'])
    assert len(loud) == 1 and 'its backbone has RANDOM' in loud[0]


def test_ld_and_dd_default_load_official_files(weights_dir):
    tiny = dict(embed_dim=32, num_heads=2)
    src = hub.dinov2_vits14_ld(pretrained=False, **tiny)
    head = {'decode_head.' + k: v for k, v in _randomised(src.decode_head.state_dict()).items()}
    backbone = _randomised(src.backbone.state_dict())
    torch.save({'state_dict': head}, weights_dir / 'dinov2_vits14_nyu_linear4_head.pth')
    torch.save(backbone, weights_dir / 'dinov2_vits14_pretrain.pth')
    model, loud = _call_recording(hub.dinov2_vits14_ld, **tiny)
    assert loud == []
    _assert_state_equal(model, head)
    _assert_state_equal(model, {'backbone.' + k: v for k, v in backbone.items()})
    # The official KITTI DPT head: found by its name, with the KITTI depth range.
    dd = hub.dinov2_vits14_dd(pretrained=False, **tiny)
    dd_head = {'decode_head.' + k: v for k, v in _randomised(dd.decode_head.state_dict()).items()}
    torch.save({'state_dict': dd_head}, weights_dir / 'dinov2_vits14_kitti_dpt_head.pth')
    model, loud = _call_recording(hub.dinov2_vits14_dd, weights='KITTI', **tiny)
    assert loud == [] and model.decode_head.max_depth == 80.0
    _assert_state_equal(model, dd_head)
    model, loud = _call_recording(hub.dinov2_vits14_dd, weights='NYU', **tiny)
    assert len(loud) == 1 and 'dinov2_vits14_nyu_dpt_head.pth' in loud[0]
    assert model.decode_head.max_depth == 10.0  # random weights: the NYU range


def test_segmentation_linear_default_loads_official_files(weights_dir):
    _need('dinov2_vits14_ade20k_linear')
    tiny = dict(depth=2, embed_dim=32, num_heads=2, img_size=56)
    src = hub.dinov2_vits14_ade20k_linear(pretrained=False, **tiny)
    state = _randomised(src.state_dict())
    head = {k: v for k, v in state.items() if k.startswith('decode_head.')}
    backbone = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    torch.save({'state_dict': head}, weights_dir / 'dinov2_vits14_ade20k_linear_head.pth')
    torch.save(backbone, weights_dir / 'dinov2_vits14_pretrain.pth')
    model, loud = _call_recording(hub.dinov2_vits14_ade20k_linear, **tiny)
    assert loud == []
    _assert_state_equal(model, state)


def test_m2f_segmentor_default_loads_official_files(weights_dir):
    _need('dinov3_vit7b16_ms')
    tiny = dict(depth=4, embed_dim=32, num_heads=2, feat_channels=32,
                adapter_kwargs=dict(conv_inplane=8, deform_num_heads=4))
    src = hub.dinov3_vit7b16_ms(pretrained=False, **tiny)
    full = _randomised(src.state_dict())
    backbone = _randomised(src.backbone.backbone.state_dict())  # differs from full's ViT
    torch.save({'state_dict': full}, weights_dir / 'dinov3_vit7b16_ade20k_m2f_head-bf307cb1.pth')
    torch.save(backbone, weights_dir / V3_7B_BACKBONE)
    model, loud = _call_recording(hub.dinov3_vit7b16_ms, **tiny)
    assert loud == []
    _assert_state_equal(model, {k: v for k, v in full.items()
                                if not k.startswith('backbone.backbone.')})
    _assert_state_equal(model.backbone.backbone, backbone)


def test_mmdet_dino_detector_loads_its_file(weights_dir):
    _need('dinov3_vit7b16_de')
    tiny = dict(depth=4, embed_dim=32, num_heads=2, out_indices=[0, 1, 2, 3])
    src = hub.dinov3_vit7b16_de(pretrained=False, detector='mmdet_dino', **tiny)
    state = _randomised(src.state_dict())
    torch.save({'state_dict': state}, weights_dir / 'dinov3_vit7b16_coco_detector_dino_mm.pth')
    model, loud = _call_recording(hub.dinov3_vit7b16_de, detector='mmdet_dino', **tiny)
    assert loud == []
    _assert_state_equal(model, state)


def test_detector_default_is_the_official_plain_detr_with_both_files(weights_dir):
    """The default loads the official head file (``model`` entry, no ViT, keys and shapes of
    tests/detection/test_plain_detr.py's manifest) and the official backbone file: every
    tensor lands, nothing stays random, and it predicts COCO labels. A head file without
    a backbone file is refused, naming the missing keys' prefix."""
    _need('dinov3_vit7b16_de')
    from tests.detection.test_plain_detr import TINY, _batch, _random_official_state
    vit = dict(depth=TINY['vit_depth'], embed_dim=TINY['vit_dim'], num_heads=TINY['vit_heads'])
    det = dict(hidden_dim=TINY['hidden'], nheads=TINY['nheads'], dim_feedforward=TINY['ffn'],
               num_encoder_layers=TINY['enc_layers'], num_decoder_layers=TINY['dec_layers'],
               num_queries_one2one=10, num_queries_one2many=TINY['num_queries'] - 10,
               rpe_hidden_dim=TINY['rpe_hidden'], topk=50)
    official = _random_official_state(TINY)
    prefix = 'backbone.0._backbone.backbone.'
    head = {k: v for k, v in official.items() if not k.startswith(prefix)}
    backbone = {k[len(prefix):]: v for k, v in official.items() if k.startswith(prefix)}
    torch.save({'model': head}, weights_dir / 'dinov3_vit7b16_coco2017_detr_head-b0235ff7.pth')
    torch.save(backbone, weights_dir / V3_7B_BACKBONE)
    model, loud = _call_recording(hub.dinov3_vit7b16_de, detector_kwargs=det, **vit)
    assert loud == []
    assert type(model).__name__ == 'PlainDETR' and not model.training
    _assert_state_equal(model, official)
    data = _batch(model)
    results = model.predict(data['inputs'], data['data_samples'])
    assert all(len(r.pred_instances) > 0 and (r.pred_instances.labels < 80).all()
               for r in results)
    with pytest.raises(RuntimeError, match='holds no ViT weights'):
        hub.dinov3_vit7b16_de(weights=str(weights_dir / 'dinov3_vit7b16_coco2017_detr_head-'
                                          'b0235ff7.pth'), pretrained=False,
                              detector_kwargs=det, **vit)


def test_m2f_segmentor_loads_an_official_layout_head_file(weights_dir):
    """``dinov3_vit7b16_ms`` with a head file in the official layout (adapter + detectron2
    Mask2Former head under ``segmentation_model.``, no ViT; keys and shapes from the
    manifests in tests/models/segmentation/test_vit_adapter.py) and the official backbone
    file: every tensor lands where the converter says, nothing is left random."""
    _need('dinov3_vit7b16_ms')
    from dino_mm.models.segmentation.official_m2f import convert_official_m2f
    from tests.models.segmentation.test_vit_adapter import (official_adapter_manifest,
                                                            official_m2f_head_manifest)
    tiny = dict(depth=4, embed_dim=32, num_heads=2, feat_channels=32,
                adapter_kwargs=dict(conv_inplane=8, deform_num_heads=4))
    official = {f'segmentation_model.0.{k}': v for k, v in official_adapter_manifest(
        32, 8, 4, 4, 0.5, 0.25, 4).items()}
    official.update(official_m2f_head_manifest(
        [32] * 4, 32, enc_layers=6, enc_heads=16, enc_ffn=4096, dec_layers=9, dec_ffn=4096,
        queries=100, classes=150))
    torch.manual_seed(0)
    head = {k: (torch.randn(s) if s else torch.tensor(3)) for k, s in official.items()}
    for k in head:
        if k.endswith('running_var'):
            head[k] = head[k].abs() + 0.5
    torch.save(head, weights_dir / 'dinov3_vit7b16_ade20k_m2f_head-bf307cb1.pth')
    src = hub.dinov3_vit7b16_ms(pretrained=False, **tiny)
    backbone = _randomised(src.backbone.backbone.state_dict())
    torch.save(backbone, weights_dir / V3_7B_BACKBONE)
    model, loud = _call_recording(hub.dinov3_vit7b16_ms, **tiny)
    assert loud == []
    _assert_state_equal(model, convert_official_m2f(head))
    _assert_state_equal(model.backbone.backbone, backbone)


def test_dinov2_m2f_segmentor_loads_the_official_mmseg0_file(weights_dir):
    """``dinov2_vitg14_ade20k_m2f`` with a file in the official layout (mmseg 0.x: the
    original ViT-Adapter with its ViT under ``backbone.``, the mmcv-1.x Mask2Former under
    ``decode_head.``; keys and shapes from the manifests of
    tests/models/segmentation/test_vit_adapter_injector.py and test_dinov2_m2f_head.py):
    it loads strictly, every tensor lands where the converter says, and it predicts."""
    _need('dinov2_vitg14_ade20k_m2f')
    from dino_mm.models.segmentation.official_m2f import convert_dinov2_m2f
    from tests.models.segmentation import test_vit_adapter_injector as adapter
    from tests.models.segmentation.test_dinov2_m2f_head import dinov2_m2f_head_manifest
    official = adapter._random_official_state()
    feat = 64
    head = dinov2_m2f_head_manifest([adapter.D] * 4, feat, feat, enc_layers=6, enc_heads=2,
                                    enc_ffn=4 * feat, dec_layers=9, dec_ffn=4 * feat,
                                    queries=200, classes=150)
    g = torch.Generator().manual_seed(1)
    official.update({k: torch.randn(s, generator=g) for k, s in head.items()})
    torch.save({'meta': {}, 'state_dict': official}, weights_dir / 'dinov2_vitg14_ade20k_m2f.pth')
    tiny = dict(depth=adapter.DEPTH, embed_dim=adapter.D, num_heads=adapter.HEADS,
                feat_channels=feat,
                adapter_kwargs=dict(conv_inplane=adapter.INPLANE,
                                    deform_num_heads=adapter.DEFORM_HEADS))
    model, loud = _call_recording(hub.dinov2_vitg14_ade20k_m2f, **tiny)
    assert loud == []
    assert type(model.backbone).__name__ == 'ViTAdapter'
    assert model.backbone.interaction_ranges == [tuple(r) for r in adapter.RANGES]
    _assert_state_equal(model, convert_dinov2_m2f(official))
    with torch.no_grad():
        sample = model.predict(torch.randn(1, 3, 64, 64))[0]
    logits = sample.seg_logits.data
    assert logits.shape == (150, 64, 64) and torch.isfinite(logits).all()


def _built_config(entry, monkeypatch, **kwargs):
    """The config an entry builds at its default sizes (nothing is built: MODELS.build is
    replaced by a recorder)."""
    from dino_mm.registry import MODELS
    seen = []
    monkeypatch.setattr(MODELS, 'build', lambda cfg, *a, **k: seen.append(cfg) or
                        torch.nn.Identity())
    getattr(hub, entry)(pretrained=False, **kwargs)
    return seen[0]


def test_m2f_entries_have_the_official_sizes(monkeypatch):
    """Full-size sizes as facts: DINOv3 from the official segmentor code (16 deformable
    heads; 6 + 9 layers, 16 heads, FFN 4096, 100 queries, hidden 2048 -- fixed there), DINOv2
    from the ViT-Adapter ViT-g recipe (block ranges, 24 deformable heads, 1024 wide, 32
    heads, FFN 4096, 200 queries). Shapes follow from these, so a wrong value here is a
    released file that does not load."""
    _need('dinov3_vit7b16_ms')
    want = {
        'dinov3_vit7b16_ms': dict(type='dino_mm.DinoViTAdapter', deform=16,
                                  indexes=[9, 19, 29, 39], feat=2048, heads=16, ffn=4096,
                                  queries=100),
        'dinov2_vitg14_ade20k_m2f': dict(type='dino_mm.ViTAdapter', deform=24,
                                         indexes=[[0, 9], [10, 19], [20, 29], [30, 39]],
                                         feat=1024, heads=32, ffn=4096, queries=200),
    }
    for entry, w in want.items():
        cfg = _built_config(entry, monkeypatch)
        backbone, head = cfg['backbone'], cfg['decode_head']
        enc = head['pixel_decoder']['encoder']
        dec = head['transformer_decoder']
        got = dict(type=backbone['type'], deform=backbone['deform_num_heads'],
                   indexes=[list(i) if isinstance(i, (list, tuple)) else i
                            for i in backbone['interaction_indexes']],
                   feat=head['feat_channels'], heads=enc['layer_cfg']['self_attn_cfg'][
                       'num_heads'], ffn=enc['layer_cfg']['ffn_cfg']['feedforward_channels'],
                   queries=head['num_queries'])
        assert got == w, entry
        assert (enc['num_layers'], dec['num_layers']) == (6, 9), entry
        layer = dec['layer_cfg']
        assert layer['self_attn_cfg']['num_heads'] == layer['cross_attn_cfg']['num_heads'] \
            == w['heads'], entry
        assert layer['ffn_cfg']['feedforward_channels'] == w['ffn'], entry
