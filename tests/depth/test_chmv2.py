"""CHMv2 canopy heights (official ``dinov3_vitl16_chmv2``) in dino_mm.

* parity with HF transformers' ``CHMv2ForDepthEstimation`` (the oracle), both ways: a small
  random HF model converted to dino_mm, and a small random dino_mm model converted to HF,
  predict the same canopy-height maps (fp32), also through HF's image processor on a real
  photograph of a size that needs padding;
* the official head file: a state dict with exactly the key names and shapes of the
  official CHMv2 ``DPTHead`` (manifest below, read off the module definitions of
  ``dinov3/eval/depth/models/dpt_head.py`` with the ``_get_chmv2_config`` arguments) loads
  strictly through the hub entry and through the config leaf;
* the ``chmv2_mixlog`` bins and normalisation against references written here from
  ``create_chmv2_mixlog_bins`` / ``create_outputs_with_chmv2_mixlog_norm``;
* offline errors name the official files.
"""
import os.path as osp
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.oracles import require

require('transformers.models.chmv2')
from transformers import CHMv2Config, CHMv2ForDepthEstimation  # noqa: E402
from transformers.models.chmv2.image_processing_chmv2 import CHMv2ImageProcessor  # noqa: E402
from transformers.models.chmv2.modeling_chmv2 import (CHMv2FeaturesToDepth,  # noqa: E402
                                                      CHMv2Head)

from dino_mm.hub import depthers  # noqa: E402
from dino_mm.models.depth import DinoDepthEstimator, DPTDepthHead  # noqa: E402
from dino_mm.models.depth.chmv2 import (chmv2_dino_mm_to_hf, chmv2_head_cfg,  # noqa: E402
                                        chmv2_hf_head_to_official, chmv2_hf_to_dino_mm,
                                        chmv2_model_cfg, predict_canopy_height)
from dino_mm.models.depth.decode_head import chmv2_mixlog_bins, chmv2_mixlog_depth  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
LEAF = osp.join(ROOT, 'configs/depth/dinov3-vitl16_chmv2_canopy-height.py')
HEAD_FILE = 'dinov3_vitl16_chmv2_dpt_head-3703d643.pth'
BACKBONE_FILE = 'dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth'

# Small model, same structure: 4 blocks of width 64 (4 heads of 16), all four taken.
D, DEPTH, HEADS = 64, 4, 4
PPC, CHANNELS, HIDDEN = [8, 16, 32, 64], 32, 16
RTOL = 1e-4  # fp32; the conversions are exact, the differences are summation order


# --------------------------------------------------------------------------- helpers
def _hf_config() -> CHMv2Config:
    backbone = dict(model_type='dinov3_vit', hidden_size=D, intermediate_size=4 * D,
                    num_attention_heads=HEADS, num_hidden_layers=DEPTH, num_register_tokens=4,
                    key_bias=True, out_indices=[1, 2, 3, 4], reshape_hidden_states=True,
                    apply_layernorm=True, return_class_token=True, patch_size=16,
                    # the official ViT-L norms are LayerNorm(eps=1e-5) ('layernormbf16');
                    # HF's CHMv2 backbone default is 1e-6
                    layer_norm_eps=1e-5)
    return CHMv2Config(backbone_config=backbone, post_process_channels=PPC,
                       fusion_hidden_size=CHANNELS, head_hidden_size=HIDDEN,
                       number_output_channels=256)


def _dino_mm_model() -> DinoDepthEstimator:
    cfg = chmv2_model_cfg(out_indices=range(DEPTH), embed_dim=D, depth=DEPTH, num_heads=HEADS,
                          head=chmv2_head_cfg(embed_dims=D, post_process_channels=PPC,
                                              channels=CHANNELS, n_hidden_channels=HIDDEN))
    cfg.pop('type')
    return DinoDepthEstimator(**cfg).eval()


@torch.no_grad()
def _perturb(model: torch.nn.Module, bins_conv: str, seed: int) -> None:
    """Random non-trivial values everywhere (biases, norms, layer scales, tokens), and a
    wide bin-logit layer so that the heights spread over metres instead of sitting at the
    mean bin (which would hide most mistakes)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(p, std, mean=0.0):
        p.copy_(mean + std * torch.randn(p.shape, generator=gen))

    for name, p in model.named_parameters():
        if name.startswith(bins_conv):
            rand(p, 0.5)
        elif 'norm' in name and name.endswith('weight'):
            rand(p, 0.1, 1.0)
        elif name.endswith('bias') or 'token' in name:
            rand(p, 0.05 if name.endswith('bias') else 0.5)
        elif 'layer_scale' in name or name.endswith('gamma'):
            rand(p, 0.1, 0.8)
        elif p.dim() > 1:
            rand(p, 1.0 / p[0].numel() ** 0.5)
    for name, p in model.named_parameters():
        if name.endswith('k_proj.bias'):
            # The official ViT masks its key bias to zero (LinearKMaskedBias); HF applies
            # its k_proj.bias before RoPE, where it is not softmax-invariant.
            p.zero_()


@pytest.fixture(scope='module')
def hf_model() -> CHMv2ForDepthEstimation:
    torch.manual_seed(0)
    model = CHMv2ForDepthEstimation(_hf_config()).eval()
    _perturb(model, 'head.conv_depth.head.4.', seed=1)
    return model


def _assert_close(got: torch.Tensor, ref: torch.Tensor) -> float:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    rel = ((got - ref).abs() / ref.abs()).max().item()
    assert rel < RTOL, rel
    return rel


@torch.no_grad()
def _dino_mm_heights(model: DinoDepthEstimator, x: torch.Tensor) -> torch.Tensor:
    """The head's map on the (padded) input grid, as HF returns it (no resize, no clamp)."""
    return model.decode_head(model.extract_feat(x))[:, 0]


@pytest.fixture
def weights_dir(weights_dir, monkeypatch, tmp_path):
    """The shared empty weights folders (tests/conftest.py), run from tmp as the cwd."""
    monkeypatch.chdir(tmp_path)
    return weights_dir


# ------------------------------------------------------------------ (a) parity with HF
@pytest.mark.parametrize('hw', [(48, 64), (32, 32)])
def test_hf_to_dino_mm_predicts_the_same_heights(hf_model, hw):
    model = _dino_mm_model()
    model.load_state_dict(chmv2_hf_to_dino_mm(hf_model.state_dict(), head_dim=D // HEADS),
                          strict=True)
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf_model(pixel_values=x).predicted_depth
    got = _dino_mm_heights(model, x)
    _assert_close(got, ref)
    assert ref.max() - ref.min() > 2.0, 'heights too uniform to tell conversions apart'
    assert 0 < ref.min() and ref.max() <= 96.0


def test_dino_mm_to_hf_predicts_the_same_heights(hf_model):
    model = _dino_mm_model()
    _perturb(model, 'decode_head.conv_depth.head.4.', seed=3)
    converted = chmv2_dino_mm_to_hf(model.state_dict())
    hf = CHMv2ForDepthEstimation(_hf_config()).eval()
    hf.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, 64, 48, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = hf(pixel_values=x).predicted_depth
    _assert_close(_dino_mm_heights(model, x), ref)
    assert ref.max() - ref.min() > 2.0
    # and back: every tensor survives (HF's k_proj.bias is written as the zero the official
    # mask makes of it)
    back = chmv2_hf_to_dino_mm(converted, head_dim=D // HEADS)
    state = model.state_dict()
    assert sorted(back) == sorted(state)
    for k, v in state.items():
        if k.endswith('attn.qkv.bias'):
            v = v * state[k + '_mask']
            assert torch.equal(back[k] * back[k + '_mask'], v), k
        else:
            assert torch.equal(back[k], v), k


def test_non_zero_hf_key_bias_is_reported(hf_model):
    sd = dict(hf_model.state_dict())
    key = 'backbone.model.layer.0.attention.k_proj.bias'
    sd[key] = torch.ones_like(sd[key])
    with pytest.warns(UserWarning, match='masked to zero by the official'):
        chmv2_hf_to_dino_mm(sd, head_dim=D // HEADS)


def test_notebook_inference_matches_hf_processor_and_model(hf_model, real_images):
    """A real photograph whose size needs padding: dino_mm's notebook path (normalise,
    center-pad, whole-image prediction, bilinear resize to the image) against HF's image
    processor (same normalisation and center padding) + model, resized as the notebook."""
    model = _dino_mm_model()
    model.load_state_dict(chmv2_hf_to_dino_mm(hf_model.state_dict(), head_dim=D // HEADS))
    image = torch.from_numpy(real_images['chelsea'][100:140, 150:206].copy()).permute(2, 0, 1)
    assert tuple(image.shape) == (3, 40, 56)  # rasterio order: bands first
    pixels = CHMv2ImageProcessor()(images=image, return_tensors='pt')['pixel_values']
    assert tuple(pixels.shape) == (1, 3, 48, 64)
    with torch.no_grad():
        ref = hf_model(pixel_values=pixels).predicted_depth
    ref = F.interpolate(ref[:, None], size=(40, 56), mode='bilinear', align_corners=False)[0, 0]
    got = predict_canopy_height(model, image)
    _assert_close(got, ref)
    batch = predict_canopy_height(model, image[None].expand(2, -1, -1, -1))
    assert batch.shape == (2, 40, 56) and torch.allclose(batch[1], got, rtol=1e-5)


# ------------------------------------------------------------------- (b) official files
def _official_head_manifest():
    """Key -> shape of the official CHMv2 head (``depther.decoder``), from the module
    definitions of dinov3/eval/depth/models/dpt_head.py with ``_get_chmv2_config``:
    ``DPTHead(in_channels=[1024]*4, channels=256 (default), post_process_channels=[128, 256,
    512, 1024] (default), readout_type='project' (use_cls_token), n_output_channels=256,
    n_hidden_channels=128, use_batchnorm=False, use_bias=True,
    projection_after_fusion=False)``."""
    m = {}
    ppc = [128, 256, 512, 1024]
    for i, c in enumerate(ppc):
        # ReassembleBlocks.projects[i]: ConvModule(1024 -> c, 1x1, bias 'auto' = True)
        m[f'reassemble_blocks.projects.{i}.conv.weight'] = (c, 1024, 1, 1)
        m[f'reassemble_blocks.projects.{i}.conv.bias'] = (c, )
        # readout_projects[i]: Sequential(Linear(2 * 1024, 1024), GELU)
        m[f'reassemble_blocks.readout_projects.{i}.0.weight'] = (1024, 2048)
        m[f'reassemble_blocks.readout_projects.{i}.0.bias'] = (1024, )
        # DPTHead.convs[i]: ConvModule(c -> 256, 3x3, bias=False)
        m[f'convs.{i}.conv.weight'] = (256, c, 3, 3)
    # resize_layers: ConvTranspose2d k4 s4, ConvTranspose2d k2 s2, Identity, Conv2d k3 s2
    m['reassemble_blocks.resize_layers.0.weight'] = (128, 128, 4, 4)
    m['reassemble_blocks.resize_layers.0.bias'] = (128, )
    m['reassemble_blocks.resize_layers.1.weight'] = (256, 256, 2, 2)
    m['reassemble_blocks.resize_layers.1.bias'] = (256, )
    m['reassemble_blocks.resize_layers.3.weight'] = (1024, 1024, 3, 3)
    m['reassemble_blocks.resize_layers.3.bias'] = (1024, )
    # batchnorm_layers are nn.Identity (use_batchnorm=False): no tensors
    for i in range(4):
        # FeatureFusionBlock: project ConvModule 1x1 (bias=True); fusion_blocks[0] has no
        # res_conv_unit1; PreActResidualConvUnit convs 3x3 with bias=use_bias=True
        m[f'fusion_blocks.{i}.project.conv.weight'] = (256, 256, 1, 1)
        m[f'fusion_blocks.{i}.project.conv.bias'] = (256, )
        for unit in ((2, ) if i == 0 else (1, 2)):
            for conv in (1, 2):
                m[f'fusion_blocks.{i}.res_conv_unit{unit}.conv{conv}.conv.weight'] = (256, 256, 3, 3)
                m[f'fusion_blocks.{i}.res_conv_unit{unit}.conv{conv}.conv.bias'] = (256, )
    # projection_after_fusion=False: DPTHead.project is nn.Identity (no tensors)
    # UpConvHead(256, 256, 128): Conv 3x3 256->128, Interpolate, Conv 3x3 128->128, ReLU,
    # Conv 1x1 128->256
    m['conv_depth.head.0.weight'] = (128, 256, 3, 3)
    m['conv_depth.head.0.bias'] = (128, )
    m['conv_depth.head.2.weight'] = (128, 128, 3, 3)
    m['conv_depth.head.2.bias'] = (128, )
    m['conv_depth.head.4.weight'] = (256, 128, 1, 1)
    m['conv_depth.head.4.bias'] = (256, )
    return m


def _official_head_file(path, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sd = {k: 0.02 * torch.randn(s, generator=gen) for k, s in _official_head_manifest().items()}
    torch.save(sd, path)  # the official file is the bare decoder state dict
    return sd


def _sat_backbone_file(path, depth=1, seed=0):
    """A SAT-493M-style ViT-L/16 file (official layout, with ``local_cls_norm``), reduced
    to ``depth`` blocks."""
    from dino_mm.models.backbones import DinoVisionTransformer
    src = DinoVisionTransformer('dinov3_vitl16', depth=depth, untie_global_and_local_cls_norm=True)
    gen = torch.Generator().manual_seed(seed)
    sd = {k: (v if k.endswith(('bias_mask', 'periods')) else
              0.02 * torch.randn(v.shape, generator=gen)) for k, v in src.state_dict().items()}
    torch.save(sd, path)
    return sd


def _assert_loaded(module, sd):
    state = module.state_dict()
    assert sorted(state) == sorted(sd)
    for k, v in sd.items():
        assert torch.equal(state[k], v), k


def test_manifest_is_what_dino_mm_and_hf_build():
    manifest = _official_head_manifest()
    assert len(manifest) == 68
    with torch.device('meta'):
        head = DPTDepthHead(**{k: v for k, v in chmv2_head_cfg().items() if k != 'type'})
        hf_head = CHMv2Head(CHMv2Config())  # the released sizes are HF's defaults
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == manifest
    renamed = chmv2_hf_head_to_official(hf_head.state_dict())
    assert {k: tuple(v.shape) for k, v in renamed.items()} == manifest


def test_official_head_file_loads_strictly_through_the_hub(weights_dir):
    head_sd = _official_head_file(weights_dir / HEAD_FILE)
    bb_sd = _sat_backbone_file(weights_dir / BACKBONE_FILE)
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)  # the default must find both files
        model = depthers.dinov3_vitl16_chmv2(depth=1, out_indices=[0, 0, 0, 0])
    _assert_loaded(model.decode_head, head_sd)
    _assert_loaded(model.backbone, bb_sd)
    assert model.backbone.local_cls_norm is not None
    image = torch.randint(0, 256, (3, 40, 52), dtype=torch.uint8)
    height = predict_canopy_height(model, image)
    assert height.shape == (40, 52) and torch.isfinite(height).all()
    assert 0.001 <= height.min() and height.max() <= 96.0
    # strict: one extra or one missing tensor is refused, naming the key
    extra = dict(head_sd, **{'project.conv.weight': torch.zeros(256, 256, 3, 3)})
    torch.save(extra, weights_dir / 'extra.pth')
    with pytest.raises(RuntimeError, match='project.conv.weight'):
        depthers.dinov3_vitl16_chmv2(depth=1, out_indices=[0, 0, 0, 0],
                                     weights=str(weights_dir / 'extra.pth'))
    short = {k: v for k, v in head_sd.items() if not k.startswith('conv_depth.head.4')}
    torch.save(short, weights_dir / 'short.pth')
    with pytest.raises(RuntimeError, match='conv_depth.head.4.bias'):
        depthers.dinov3_vitl16_chmv2(depth=1, out_indices=[0, 0, 0, 0],
                                     weights=str(weights_dir / 'short.pth'))
    # the LVD-1689M ViT-L file has no local-crop norm: the entry builds the backbone to fit
    from dino_mm.models.backbones import DinoVisionTransformer
    lvd = DinoVisionTransformer('dinov3_vitl16', depth=1).state_dict()
    torch.save(lvd, weights_dir / 'dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth')
    model = depthers.dinov3_vitl16_chmv2(depth=1, out_indices=[0, 0, 0, 0],
                                         backbone_weights='LVD1689M')
    assert model.backbone.local_cls_norm is None
    _assert_loaded(model.backbone, lvd)


def test_config_leaf_loads_both_official_files_in_init_weights(weights_dir):
    from mmengine.config import Config

    from dino_mm.registry import MODELS
    cfg = Config.fromfile(LEAF)
    assert cfg.model.backbone.init_cfg.checkpoint == f'checkpoints/{BACKBONE_FILE}'
    assert cfg.model.decode_head.init_cfg.checkpoint == f'checkpoints/{HEAD_FILE}'
    assert cfg.model.data_preprocessor.mean == [107.1, 104.805, 75.48]
    cfg.model.backbone.update(depth=1, out_indices=[0, 0, 0, 0])
    bb_sd = _sat_backbone_file(weights_dir / BACKBONE_FILE)
    model = MODELS.build(cfg.model)
    with pytest.raises(FileNotFoundError, match=HEAD_FILE):
        model.init_weights()  # the backbone is there, the head is not
    head_sd = _official_head_file(weights_dir / HEAD_FILE, seed=5)
    model = MODELS.build(cfg.model)
    model.init_weights()  # what tools/test.py CONFIG none calls
    _assert_loaded(model.decode_head, head_sd)
    _assert_loaded(model.backbone, bb_sd)


def test_tools_test_none_on_the_leaf_is_the_notebook_inference(weights_dir, real_images):
    """``tools/test.py <leaf> none`` on tiles in the official layout (RGB GeoTIFF, uint8
    GeoTIFF heights in metres with nodata and a cloud mask band): both official files load
    through init_cfg, the predictions are the notebook's (mmcv's BGR loading + the
    preprocessor's 0-255 mean / std = RGB/255 normalised with the CHMv2 mean / std), and the
    metrics are those of the predictions on the valid pixels."""
    import mmengine

    from tests.depth.canopy_tiles import synthetic_heights, write_chm, write_rgb
    from tests.depth.test_depth_e2e import _tool
    root = weights_dir.parent / 'data' / 'canopy_height'
    (root / 'rgb').mkdir(parents=True)
    (root / 'chm').mkdir()
    tiles = [real_images['astronaut'][:40, :52], real_images['coffee'][60:108, 80:144]]
    lines, expected_heights = [], []
    for i, tile in enumerate(tiles):
        write_rgb(root / 'rgb' / f'{i}.tif', tile)
        stored, mask, metres = synthetic_heights(tile, seed=i)
        write_chm(root / 'chm' / f'{i}.tif', stored, mask=mask)
        lines.append(f'rgb/{i}.tif chm/{i}.tif\n')
        expected_heights.append(metres)
    (root / 'test.txt').write_text(''.join(lines))
    _official_head_file(weights_dir / HEAD_FILE, seed=7)
    _sat_backbone_file(weights_dir / BACKBONE_FILE, seed=8)
    out = weights_dir.parent / 'preds.pkl'
    metrics = _tool('test').main([
        LEAF, 'none', '--work-dir', str(weights_dir.parent / 'work'), '--out', str(out),
        '--cfg-options', 'model.backbone.depth=1', 'model.backbone.out_indices=[0,0,0,0]',
        f'test_dataloader.dataset.data_root={root}', 'test_dataloader.num_workers=0',
        'test_dataloader.persistent_workers=False'])
    model = depthers.dinov3_vitl16_chmv2(depth=1, out_indices=[0, 0, 0, 0])  # same files
    errors = []
    for tile, metres, pred in zip(tiles, expected_heights, mmengine.load(str(out))):
        expected = predict_canopy_height(model, torch.from_numpy(tile.copy()).permute(2, 0, 1))
        got = pred['pred_depth_map']['data'][0]
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        valid = ~np.isnan(metres)
        gt = np.maximum(metres[valid], 1e-3)  # bare ground is scored as 1 mm
        errors.append(got.numpy()[valid].clip(min=0) - gt)
    errors = np.concatenate(errors).astype(np.float64)
    assert metrics['canopy/mae'] == pytest.approx(np.abs(errors).mean(), rel=1e-4)
    assert metrics['canopy/rmse'] == pytest.approx(np.sqrt((errors**2).mean()), rel=1e-4)
    assert metrics['canopy/bias'] == pytest.approx(errors.mean(), rel=1e-4, abs=1e-4)


def test_tools_train_fine_tunes_the_official_head_then_tools_test_shows(weights_dir,
                                                                         real_images):
    """A user config inheriting the leaf (``projects/`` style): ``tools/train.py`` fine-tunes
    the official head on official-layout tiles (the backbone stays the SAT-493M file, the
    head moves away from the official file, every logged loss is finite), then ``tools/test.py --show-dir`` evaluates the checkpoint and draws the
    canopy-height pictures."""
    import cv2

    from tests.depth.canopy_tiles import write_tile_set
    from tests.depth.test_depth_e2e import _tool
    root = weights_dir.parent / 'data' / 'canopy_height'
    write_tile_set(root, [real_images[k] for k in ('astronaut', 'coffee', 'chelsea')],
                   size=(48, 64))
    head_sd = _official_head_file(weights_dir / HEAD_FILE, seed=7)
    backbone_sd = _sat_backbone_file(weights_dir / BACKBONE_FILE, seed=8)
    work = weights_dir.parent / 'work'
    user_cfg = weights_dir.parent / 'my_canopy.py'
    user_cfg.write_text(f"""_base_ = [{LEAF!r}]
data_root = {str(root)!r}
model = dict(backbone=dict(depth=1, out_indices=[0, 0, 0, 0]))
train_pipeline = [
    dict(type='mmcv.LoadImageFromFile'),
    dict(type='dino_mm.LoadCanopyHeightMap'),
    dict(type='mmseg.RandomCrop', crop_size=(32, 32)),
    dict(type='mmseg.RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
    dict(type='mmseg.PackSegInputs', meta_keys={{{{_base_.meta_keys}}}}),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(block=16)
test_evaluator = val_evaluator
train_cfg = dict(max_iters=6, val_interval=6)
param_scheduler = [dict(type='OneCycleLR', eta_max=3e-4, total_steps=6, pct_start=0.5,
                        anneal_strategy='cos', final_div_factor=1000, by_epoch=False)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=6))
log_processor = dict(window_size=1)
""")
    _tool('train').main([str(user_cfg), '--work-dir', str(work)])
    ckpt = work / 'iter_6.pth'
    state = torch.load(ckpt, map_location='cpu', weights_only=True)['state_dict']
    for k, v in backbone_sd.items():  # frozen: still the official file
        assert torch.equal(state[f'backbone.{k}'], v), k
    moved = [k for k, v in head_sd.items() if not torch.equal(state[f'decode_head.{k}'], v)]
    assert len(moved) > len(head_sd) // 2  # the head was initialised from the file, then trained
    logs = [json for json in work.rglob('*.json') if json.parent.name == 'vis_data']
    assert logs, 'no scalars log'
    import json
    losses = [json.loads(line) for line in logs[0].read_text().splitlines()]
    losses = [r['loss'] for r in losses if 'loss' in r]
    assert len(losses) == 6 and all(np.isfinite(losses))
    show = weights_dir.parent / 'show'
    metrics = _tool('test').main([str(user_cfg), str(ckpt), '--work-dir',
                                  str(weights_dir.parent / 'test'), '--show-dir', str(show)])
    assert set(metrics) == {f'canopy/{k}' for k in ('mae', 'rmse', 'bias', 'r2', 'r2_block')}
    assert 0 < metrics['canopy/rmse'] < 96
    pngs = sorted(show.glob('*_depth.png'))
    assert len(pngs) == 3
    vis = cv2.imread(str(pngs[0]))
    assert vis.shape == (48, 3 * 64, 3) and vis.std() > 5  # image | ground truth | prediction


# ------------------------------------------------------------- (c) mixlog bins and norm
def _reference_bins(min_depth, max_depth, n):
    """create_chmv2_mixlog_bins, in float64: linear and log spacing up to max_depth / 8,
    blended with a weight going from 1 (log) to 0 (linear)."""
    top = max_depth / 8.0
    linear = np.linspace(min_depth, top, n)
    log = np.exp(np.linspace(np.log(min_depth), np.log(top), n))
    t = np.linspace(1.0, 0.0, n)
    return t * log + (1 - t) * linear


def _reference_norm(logits, bins):
    """create_outputs_with_chmv2_mixlog_norm, in float64 over (N, K, H, W)."""
    y = np.maximum(logits, 0.0)
    shift = np.clip(-y.min(axis=1, keepdims=True), 0.0, 1e-4) + 1e-8
    y = y + shift
    denom = np.maximum(y.sum(axis=1, keepdims=True), 1e-12)
    out = (y / denom * np.maximum(bins, 1e-12).reshape(1, -1, 1, 1)).sum(axis=1, keepdims=True)
    return np.maximum(out, 1e-12) * 8.0


def test_mixlog_bins_follow_the_official_formula():
    bins = chmv2_mixlog_bins(0.001, 96.0, 256)
    assert bins.dtype == torch.float32 and bins.shape == (256, )
    np.testing.assert_allclose(bins.numpy(), _reference_bins(0.001, 96.0, 256), rtol=2e-6)
    assert bins[0].item() == pytest.approx(0.001) and bins[-1].item() == pytest.approx(12.0)
    assert (bins.diff() > 0).all()
    # bit-identical to HF's own implementation (same float32 operations)
    hf = CHMv2FeaturesToDepth(CHMv2Config())
    assert torch.equal(bins, hf._create_mixlog_bins(256, torch.device('cpu')))


def test_mixlog_norm_follows_the_official_formula():
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 256, 5, 7, generator=gen)
    logits[0, :, 0, 0] = -1.0  # every bin ReLU'd away: uniform weights (mean bin x 8)
    logits[1, :, 1, 1] = 0.0
    logits[1, 17, 1, 1] = 50.0  # one dominant bin: its centre x 8
    bins = chmv2_mixlog_bins(0.001, 96.0, 256)
    got = chmv2_mixlog_depth(logits, bins)
    ref = _reference_norm(logits.double().numpy(), bins.double().numpy())
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5)
    assert got[0, 0, 0, 0].item() == pytest.approx(8 * bins.double().mean().item(), rel=1e-5)
    assert got[1, 0, 1, 1].item() == pytest.approx(8 * bins[17].item(), rel=1e-4)
    # the head applies it to its bin logits (and so does HF's features-to-depth module)
    head = DPTDepthHead(**{k: v for k, v in chmv2_head_cfg(
        embed_dims=D, post_process_channels=PPC, channels=CHANNELS,
        n_hidden_channels=HIDDEN).items() if k != 'type'})
    feat = torch.randn(1, CHANNELS, 6, 4, generator=gen)
    with torch.no_grad():
        logit = head.conv_depth(feat)
        depth = head.depth_pred(feat)
    np.testing.assert_allclose(depth.numpy(), _reference_norm(
        logit.double().numpy(), bins.double().numpy()), rtol=1e-5)
    hf = CHMv2FeaturesToDepth(CHMv2Config())
    torch.testing.assert_close(depth, hf(logit), rtol=1e-6, atol=0)


# ------------------------------------------------------------- (d) missing-file errors
def test_missing_files_name_the_official_files(weights_dir):
    with torch.device('meta'):
        with pytest.raises(FileNotFoundError) as err:
            depthers.dinov3_vitl16_chmv2(pretrained=True)
        for name in (HEAD_FILE, BACKBONE_FILE):
            assert name in str(err.value)
        assert str(weights_dir) in str(err.value) and 'never downloads' in str(err.value)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter('always')
            model = depthers.dinov3_vitl16_chmv2()
        loud = [str(w.message) for w in record if 'RANDOM' in str(w.message)]
        assert len(loud) == 1 and HEAD_FILE in loud[0] and BACKBONE_FILE in loud[0], loud
        assert isinstance(model, DinoDepthEstimator)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter('always')
            depthers.dinov3_vitl16_chmv2(pretrained=False)
        assert not [w for w in record if 'RANDOM' in str(w.message)]
    with pytest.raises(ValueError, match='offline'):
        depthers.dinov3_vitl16_chmv2(weights='https://dl.fbaipublicfiles.com/dinov3/x.pth')
    # a head file that is here does not hide the missing backbone
    _official_head_file(weights_dir / HEAD_FILE)
    with pytest.raises(FileNotFoundError, match=BACKBONE_FILE):
        depthers.dinov3_vitl16_chmv2(pretrained=True, depth=1, out_indices=[0] * 4)


def test_official_architecture_of_the_entry():
    with torch.device('meta'):
        model = depthers.dinov3_vitl16_chmv2(pretrained=False)
    bb, head = model.backbone, model.decode_head
    assert (bb.embed_dim, bb.n_blocks, bb.patch_size) == (1024, 24, 16)
    assert bb.out_indices == [5, 11, 17, 23] and bb.out_type == 'cls_featmap' and bb.norm_out
    assert bb.local_cls_norm is not None  # SAT-493M, as the official entry builds it
    assert (head.readout_type, head.channels, head.post_process_channels) == (
        'project', 256, [128, 256, 512, 1024])
    assert (head.n_bins, head.bins_strategy, head.norm_strategy) == (256, 'chmv2_mixlog',
                                                                      'chmv2_mixlog')
    assert (head.min_depth, head.max_depth) == (0.001, 96.0)
    assert isinstance(head.project, torch.nn.Identity) and head.use_bias
    assert head.conv_depth.head[1].align_corners is True
    pre = chmv2_model_cfg()['data_preprocessor']  # the notebook's mean / std, 0-255 scale
    assert pre['mean'] == pytest.approx([255 * m for m in (0.420, 0.411, 0.296)])
    assert pre['std'] == pytest.approx([255 * s for s in (0.213, 0.156, 0.143)])
