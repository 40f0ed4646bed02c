"""dino.txt zero-shot segmentation: the notebook's numbers, the user's door, the text tool.

Oracle: the official notebook (``dinotxt_segmentation_inference.ipynb``) rewritten here
from its description -- per-class text features from the patch half of each prompt's
embedding (normalised, averaged over OpenAI's templates, renormalised); 'whole': the image
stretched (bicubic) to whole patches, cosines of the normalised head patch tokens;
'slide': per window the cosines upsampled to the window, soft-maxed, accumulated and
divided by the counts; then bilinear to the label size and argmax.
"""
import glob
import importlib.util
import math
import os.path as osp
import subprocess
import sys

import mmengine
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.models.text.test_dinotxt import tiny_model
from tests.oracles import require

require('mmseg.models')

from mmseg.structures import SegDataSample  # noqa: E402

from dino_mm.models.text.zero_shot_seg import DINOTxtZeroShotSegmentor  # noqa: E402
from tests.segmentation import conftest as seg_conftest  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
ade_root = seg_conftest.ade_root  # the tiny on-disk ADEChallengeData2016 fixture
ADE_LEAF = 'configs/dinotxt/dinov3-vitl16_dinotxt-tet1280d20h24l_zeroshot_ade20k-512.py'
ADE_TWIN = 'configs/dinotxt/dinov2-vitl14-reg_dinotxt-tet1280d20h24l_zeroshot_ade20k-512.py'
CLASSES = ['cat', 'grass', 'sky', 'road']
# tiny_model()'s arguments as config overrides of the leaf's DINOTxt
TINY_DINOTXT = dict(
    vision_backbone=dict(_delete_=True, type='dino_mm.DinoVisionTransformer', arch='dinov2_vits14',
                         patch_size=8, img_size=32, embed_dim=32, depth=2, num_heads=2,
                         block_chunks=0, layerscale_init=1.0, num_register_tokens=2),
    text_backbone=dict(_delete_=True, type='dino_mm.TextTransformer', context_length=16, dim=32,
                       num_heads=2, num_layers=2),
    embed_dim=64, vision=dict(head_drop_path=0.0))


# ---------------------------------------------------------------- the notebook, rewritten
def ref_text_features(model, class_names, templates):
    feats = []
    with torch.no_grad():
        for name in class_names:
            emb = model.encode_text([t(name) if callable(t) else t.format(name) for t in templates])
            emb = F.normalize(emb[:, emb.shape[1] // 2:], dim=-1)  # drop the class-token half
            feats.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(feats)


def ref_predict_whole(model, img, text):
    """img (3, H, W) -> (C, h, w) cosines."""
    p = model.visual_model.backbone.patch_size
    _, h, w = img.shape
    new_h, new_w = math.ceil(h / p) * p, math.ceil(w / p) * p
    x = img[None]
    if (h, w) != (new_h, new_w):
        x = F.interpolate(x, size=(new_h, new_w), mode='bicubic', align_corners=False)
    _, patches, _ = model.visual_model.class_and_patch_tokens(x)
    patches = F.normalize(patches.reshape(new_h // p, new_w // p, -1), p=2, dim=-1)
    return torch.einsum('cd,hwd->chw', text, patches)


def ref_predict_slide(model, img, text, side, stride):
    _, H, W = img.shape
    probs = torch.zeros(text.shape[0], H, W)
    counts = torch.zeros(H, W)
    h_grids = max(H - side[0] + stride[0] - 1, 0) // stride[0] + 1
    w_grids = max(W - side[1] + stride[1] - 1, 0) // stride[1] + 1
    for i in range(h_grids):
        for j in range(w_grids):
            y1, x1 = i * stride[0], j * stride[1]
            y2, x2 = min(y1 + side[0], H), min(x1 + side[1], W)
            y1, x1 = max(y2 - side[0], 0), max(x2 - side[1], 0)
            window = img[:, y1:y2, x1:x2]
            cos = ref_predict_whole(model, window, text)
            cos = F.interpolate(cos[None], size=window.shape[1:], mode='bilinear',
                                align_corners=False)[0]
            probs[:, y1:y2, x1:x2] += cos.softmax(dim=0)
            counts[y1:y2, x1:x2] += 1
    return probs / counts


def _sample(ori_shape, img_shape):
    return SegDataSample(metainfo=dict(ori_shape=ori_shape, img_shape=img_shape,
                                       pad_shape=img_shape, padding_size=[0, 0, 0, 0]))


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return tiny_model().eval()


@pytest.mark.parametrize('mode', ['whole', 'slide'])
def test_predictions_equal_the_notebook(tiny, mode):
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    # windows of 20 x 28 pixels (not whole patches of 8: each is stretched, as the notebook)
    seg = DINOTxtZeroShotSegmentor(tiny, CLASSES, mode=mode, crop_size=(20, 28),
                                   stride=(12, 14)).eval()
    gen = torch.Generator().manual_seed(1)
    img = torch.randn(1, 3, 45, 70, generator=gen)  # not square, not a multiple of anything
    ori = (61, 93)  # the label size (the image was resized before the model)
    out = seg.predict(img, [_sample(ori, (45, 70))])[0]

    with torch.no_grad():
        text = ref_text_features(tiny, CLASSES, OPENAI_IMAGENET_TEMPLATES)
        if mode == 'whole':
            ref = ref_predict_whole(tiny, img[0], text)
        else:
            ref = ref_predict_slide(tiny, img[0], text, (20, 28), (12, 14))
        ref = F.interpolate(ref[None], size=ori, mode='bilinear', align_corners=False)[0]
    # the notebook's PROMPT_TEMPLATES: 80, from 'a bad photo of a {0}.' to 'a tattoo of the {0}.'
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    assert [OPENAI_IMAGENET_TEMPLATES[i]('cat') for i in (0, -1)] == ['a bad photo of a cat.',
                                                                      'a tattoo of the cat.']
    torch.testing.assert_close(seg.text_features(), text, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.seg_logits.data, ref, rtol=1e-5, atol=1e-5)
    assert out.pred_sem_seg.data.shape == (1, *ori)
    assert torch.equal(out.pred_sem_seg.data[0], ref.argmax(dim=0))
    if mode == 'slide':  # averaged probabilities
        torch.testing.assert_close(out.seg_logits.data.sum(0), torch.ones(ori))
    # tensor mode: scores at the input size; no data samples: predictions at the input size
    assert seg(img, mode='tensor').shape == (1, len(CLASSES), 45, 70)
    assert seg.predict(img)[0].pred_sem_seg.data.shape == (1, 45, 70)


def test_text_features_are_cached_until_train(tiny, monkeypatch):
    seg = DINOTxtZeroShotSegmentor(tiny, CLASSES, templates='simple', mode='whole').eval()
    calls = []
    original = tiny.class_text_embeddings
    monkeypatch.setattr(tiny, 'class_text_embeddings',
                        lambda *a, **k: calls.append(a) or original(*a, **k))
    img = torch.randn(2, 3, 32, 40)
    seg.predict(img)
    seg.predict(img)
    assert len(calls) == 1 and calls[0][0] == CLASSES
    seg.train().eval()
    seg.predict(img)
    assert len(calls) == 2


def test_bad_arguments_and_loss_are_named(tiny, tmp_path):
    with pytest.raises(ValueError, match='needs class_names'):
        DINOTxtZeroShotSegmentor(tiny)
    with pytest.raises(FileNotFoundError, match='missing.txt'):
        DINOTxtZeroShotSegmentor(tiny, str(tmp_path / 'missing.txt'))
    with pytest.raises(ValueError, match='duplicated'):
        DINOTxtZeroShotSegmentor(tiny, ['cat', 'cat'])
    with pytest.raises(ValueError, match="no '{}'"):
        DINOTxtZeroShotSegmentor(tiny, CLASSES, templates=['a photo'])
    with pytest.raises(ValueError, match='mode'):
        DINOTxtZeroShotSegmentor(tiny, CLASSES, mode='tiles')
    names = tmp_path / 'names.txt'
    names.write_text('# ADE-like\ncat\ngrass\n')
    assert DINOTxtZeroShotSegmentor(tiny, str(names)).class_names == ['cat', 'grass']
    seg = DINOTxtZeroShotSegmentor(tiny, CLASSES)
    # its checkpoints are dino.txt checkpoints: the same names, no frozen backbone
    assert list(seg.state_dict()) == list(tiny.state_dict())
    with pytest.raises(RuntimeError, match='nothing to train.*caption'):
        seg(torch.randn(1, 3, 32, 32), [_sample((32, 32), (32, 32))], mode='loss')
    with pytest.raises(ValueError, match='no dino.txt vision head'):
        seg.load_state_dict({'backbone.weight': torch.zeros(1)}, strict=False)


def test_leaves_are_the_official_protocol():
    from mmengine.config import Config
    from mmseg.datasets import ADE20KDataset
    cfg = Config.fromfile(osp.join(ROOT, ADE_LEAF))
    twin = Config.fromfile(osp.join(ROOT, ADE_TWIN))
    assert cfg.model.type == 'dino_mm.DINOTxtZeroShotSegmentor'
    assert cfg.model.class_names == [n.strip() for n in ADE20KDataset.METAINFO['classes']]
    assert (cfg.model.mode, cfg.model.crop_size, cfg.model.stride) == ('slide', (384, 384), (192, 192))
    assert cfg.model.templates == 'openai_imagenet'
    assert cfg.model.dinotxt.type == 'dino_mm.DINOTxt' and cfg.model.dinotxt.release == 'dinov3'
    assert cfg.model.dinotxt.text_backbone.num_layers == 24 and 'dinotxt' not in cfg
    resize = cfg.test_dataloader.dataset.pipeline[1]
    assert (resize.scale[1], resize.keep_ratio, resize.interpolation) == (512, True, 'bicubic')
    assert cfg.test_evaluator == dict(type='mmseg.IoUMetric', iou_metrics=['mIoU'])
    assert cfg.train_dataloader is None and cfg.test_cfg == dict(type='TestLoop')
    assert twin.model.dinotxt.release == 'dinov2'
    assert twin.model.dinotxt.vision_backbone.arch == 'dinov2_vitl14_reg'
    changed = {k for k in cfg.model.dinotxt if cfg.model.dinotxt[k] != twin.model.dinotxt[k]}
    assert changed == {'vision_backbone', 'backbone_checkpoint', 'release'}


# ---------------------------------------------------------------- through tools/test.py
@pytest.fixture(scope='module')
def tiny_files(tmp_path_factory, tiny):
    """The tiny model's heads checkpoint and its backbone file, as a user would have them."""
    folder = tmp_path_factory.mktemp('dinotxt_ckpt')
    ckpt, backbone = str(folder / 'dinotxt_heads.pth'), str(folder / 'backbone.pth')
    state = tiny.state_dict()
    assert not any(k.startswith('visual_model.backbone.') for k in state)
    torch.save(state, ckpt)
    torch.save(tiny.visual_model.backbone.state_dict(), backbone)
    return ckpt, backbone


def _tiny_config(tmp_path, data_root):
    pipeline = [
        dict(type='LoadImageFromFile', imdecode_backend='pillow'),
        dict(type='Resize', scale=(8192, 40), keep_ratio=True, interpolation='bicubic',
             backend='pillow'),
        dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='dino_mm.CheckSegAnnotation', num_classes=150),
        dict(type='PackSegInputs'),
    ]
    lines = [
        f'_base_ = [{osp.join(ROOT, ADE_LEAF)!r}]',
        f'model = dict(dinotxt={TINY_DINOTXT!r}, templates=["a photo of a {{}}."], '
        'crop_size=(24, 24), stride=(16, 16))',
        f'test_dataloader = dict(num_workers=0, persistent_workers=False, '
        f'dataset=dict(data_root={data_root!r}, pipeline={pipeline!r}))',
        # every image drawn with --show-dir (mmseg's default: one in 50)
        'default_hooks = dict(logger=dict(interval=1), visualization=dict(interval=1))',
    ]
    path = tmp_path / 'tiny_zeroshot_ade20k.py'
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


def test_tools_test_scores_ade20k_and_draws(ade_root, tiny, tiny_files, tmp_path):
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DefaultScope
    from mmseg.datasets import ADE20KDataset
    ckpt, backbone = tiny_files
    config = _tiny_config(tmp_path, ade_root)
    show, preds = str(tmp_path / 'show'), str(tmp_path / 'preds.pkl')
    env = dict(__import__('os').environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools/test.py'), config, ckpt,
         '--work-dir', str(tmp_path / 'work'), '--show-dir', show, '--out', preds,
         '--cfg-options', f'model.dinotxt.backbone_checkpoint={backbone}'],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert 'mIoU' in log
    logs = glob.glob(str(tmp_path / 'work' / '*' / '*.json'))
    assert logs and '"mIoU"' in open(logs[0]).read()
    pngs = glob.glob(osp.join(show, '**', '*.png'), recursive=True)
    assert len(pngs) == 2, pngs  # one overlay per validation image

    # The dumped maps are the tiny model's own: the heads and the backbone were loaded.
    dumped = mmengine.load(preds)
    cfg = Config.fromfile(config)
    seg = DINOTxtZeroShotSegmentor(tiny, cfg.model.class_names, templates=cfg.model.templates,
                                   crop_size=(24, 24), stride=(16, 16)).eval()
    with DefaultScope.overwrite_default_scope('mmseg'):  # the config's scope
        dataset = ADE20KDataset(data_root=ade_root, pipeline=cfg.test_dataloader.dataset.pipeline,
                                data_prefix=cfg.test_dataloader.dataset.data_prefix)
    assert len(dumped) == len(dataset) == 2
    for i, pred in enumerate(dumped):
        data = seg.data_preprocessor(pseudo_collate([dataset[i]]), False)
        ours = seg.predict(data['inputs'], data['data_samples'])[0]
        assert pred['img_path'] == ours.img_path
        h, w = Image.open(pred['img_path']).size[::-1]
        assert tuple(pred['pred_sem_seg']['data'].shape) == (1, h, w)
        assert torch.equal(torch.as_tensor(pred['pred_sem_seg']['data']), ours.pred_sem_seg.data)


# ---------------------------------------------------------------- tools/analysis/text_similarity.py
def _tool():
    path = osp.join(ROOT, 'tools/analysis/text_similarity.py')
    spec = importlib.util.spec_from_file_location('tool_text_similarity', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_text_similarity_tool_writes_maps(ade_root, tiny, tiny_files, tmp_path):
    ckpt, backbone = tiny_files
    config = _tiny_config(tmp_path, ade_root)
    image = sorted(glob.glob(osp.join(ade_root, 'images/validation/*.jpg')))[0]
    out = str(tmp_path / 'sim.png')
    result = _tool().main([config, ckpt, '--image', image, '--text', 'a cat', '--text', 'grass',
                           '--out', out, '--size', '32', '--backbone-weights', backbone])
    with Image.open(out) as im:
        assert im.format == 'PNG' and osp.getsize(out) > 0
        # image | map | map with 4-pixel gaps, under a 16-pixel title strip; 56 x 70 images
        assert im.size == (3 * 70 + 2 * 4, 16 + 56)
    # the maps are the segmentor's cosines for these prompts (templates '{}': the prompt)
    maps = result['maps']
    assert maps.shape == (2, 4, 5)  # short side 32 -> 4 x 5 patches of 8
    from dino_mm.apis import load_image, to_tensor
    x = to_tensor(load_image(image), (4, 5), 8)[None]
    seg = DINOTxtZeroShotSegmentor(tiny, ['a cat', 'grass'], templates=['{}']).eval()
    with torch.no_grad():
        ref = seg.patch_cosines(x)[0]
    np.testing.assert_allclose(maps, ref.numpy(), rtol=1e-5, atol=1e-5)


def test_text_similarity_tool_errors(ade_root, tiny_files, tmp_path, capsys):
    ckpt, _ = tiny_files
    tool = _tool()
    image = sorted(glob.glob(osp.join(ade_root, 'images/validation/*.jpg')))[0]
    with pytest.raises(SystemExit, match='image file not found.*nope.jpg'):
        tool.main(['dinov3_vitl16_dinotxt_tet1280d20h24l', ckpt, '--image', 'nope.jpg',
                   '--text', 'a dog', '--out', str(tmp_path / 'x.png')])
    with pytest.raises(SystemExit) as err:
        tool.main(['dinov3_vitl16_dinotxt_tet1280d20h24l', ckpt, '--image', image, '--text', ' ',
                   '--out', str(tmp_path / 'x.png')])
    assert err.value.code == 2 and 'non-empty --text' in capsys.readouterr().err
    with pytest.raises(SystemExit, match='unknown dino.txt hub entry .dinov9_txt.*dinov3_vitl16_dinotxt'):
        tool.main(['dinov9_txt', 'none', '--image', image, '--text', 'a dog',
                   '--out', str(tmp_path / 'x.png')])
    assert not osp.exists(tmp_path / 'x.png')
