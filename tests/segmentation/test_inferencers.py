"""mmseg's own inference entry points on the shipped segmentation configs.

``mmseg.apis.init_model`` + ``inference_model`` + ``show_result_pyplot`` and
``MMSegInferencer`` drop ``LoadAnnotations`` from the test pipeline and feed images only;
the annotation check of the dino_mm configs must let such samples through, while a
dataset sample whose annotation was not loaded is still an error.

The API runs in a fresh interpreter, the way a user's script would run it, on a leaf
config with a tiny ViT swapped in (everything else, including the test pipeline, is the
leaf's own).
"""
import glob
import os
import os.path as osp
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

pytest.importorskip('mmseg.apis')

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
LEAVES = sorted(glob.glob(osp.join(ROOT, 'configs/segmentation/dinov*/*.py')))
IMG_HW = (56, 70)
DIM = 32

# A user's script: the mmseg API is imported first, dino_mm only through the config's
# custom_imports (the start-up hook of dino_mm/utils/startup_hook.py makes that work).
SCRIPT = textwrap.dedent('''
    from mmseg.apis import MMSegInferencer, inference_model, init_model, show_result_pyplot
    import sys
    import numpy as np
    import torch
    from PIL import Image

    config, image, work = sys.argv[1:4]
    h, w = Image.open(image).size[::-1]

    model = init_model(config, device='cpu')
    steps = [t['type'] for t in model.cfg.test_pipeline]
    assert 'dino_mm.CheckSegAnnotation' in steps and 'LoadAnnotations' in steps, steps
    # A trained checkpoint as tools/train.py writes it (weights + dataset meta).
    from mmseg.registry import DATASETS
    meta = DATASETS.get(model.cfg.test_dataloader.dataset.type).METAINFO
    ckpt = work + '/tiny.pth'
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': list(meta['classes']),
                                          'palette': [list(p) for p in meta['palette']]}}},
               ckpt)

    model = init_model(config, ckpt, device='cpu')
    result = inference_model(model, image)
    assert tuple(result.pred_sem_seg.data.shape) == (1, h, w), result.pred_sem_seg.shape
    vis = show_result_pyplot(model, image, result, show=False, out_file=work + '/vis.png')
    assert vis.shape == (h, w, 3)
    bgr = np.ascontiguousarray(np.asarray(Image.open(image))[..., ::-1])
    from_array = inference_model(model, bgr)
    assert tuple(from_array.pred_sem_seg.data.shape) == (1, h, w)

    inferencer = MMSegInferencer(model=config, weights=ckpt, device='cpu')
    out = inferencer(image)
    assert out['predictions'].shape == (h, w), out['predictions'].shape
    both = inferencer([image, image], batch_size=2)
    assert len(both['predictions']) == 2
    assert np.array_equal(both['predictions'][0], out['predictions'])
    print('OK', int(out['predictions'].max()))
''')


def _tiny_leaf(tmp_path, leaf):
    """The leaf as `_base_` with a tiny backbone/head and whole-image inference."""
    text = textwrap.dedent(f'''
        _base_ = [{leaf!r}]
        model = dict(
            backbone=dict(depth=4, embed_dim={DIM}, num_heads=2, img_size=56,
                          out_indices=[3], init_cfg=None),
            decode_head=dict(in_channels=[{DIM}], in_index=[0], channels={DIM}),
            test_cfg=dict(_delete_=True, mode='whole'))
    ''')
    path = tmp_path / 'tiny_seg_config.py'
    path.write_text(text)
    return str(path)


def _photo(tmp_path, real_images):
    path = tmp_path / 'astronaut.jpg'
    img = Image.fromarray(real_images['astronaut']).resize(IMG_HW[::-1], Image.BILINEAR)
    img.save(path, quality=95)
    return str(path)


@pytest.mark.parametrize('leaf', [
    'configs/segmentation/dinov2/dinov2-vits14_linear_8xb2-40k_ade20k-512x512.py',
    'configs/segmentation/dinov3/dinov3-vits16_linear_8xb2-40k_voc12-512x512.py',
], ids=lambda p: osp.basename(p)[:-3])
def test_mmseg_inference_apis_in_a_fresh_process(tmp_path, real_images, leaf):
    config = _tiny_leaf(tmp_path, osp.join(ROOT, leaf))
    image = _photo(tmp_path, real_images)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH')) if p)
    proc = subprocess.run([sys.executable, '-c', SCRIPT, config, image, str(tmp_path)],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert 'OK' in proc.stdout
    assert osp.isfile(tmp_path / 'vis.png')


def _strip_like_mmseg(pipeline):
    """What inference_model / MMSegInferencer keep of a test pipeline."""
    return [dict(t) for t in pipeline if t['type'] not in ('LoadAnnotations',
                                                           'LoadDepthAnnotation')]


def test_all_leaves_present():
    assert len(LEAVES) == 17 + 25  # dinov2 + dinov3


@pytest.mark.parametrize('leaf', LEAVES, ids=osp.basename)
def test_every_leaf_test_pipeline_runs_without_annotations(tmp_path, real_images, leaf):
    """Both pipelines mmseg reads (``test_pipeline`` for inference_model, the test
    dataloader's for MMSegInferencer) accept an image-only sample."""
    from mmengine.config import Config
    from mmengine.dataset import Compose
    from mmengine.registry import DefaultScope
    cfg = Config.fromfile(leaf)
    image = _photo(tmp_path, real_images)
    for name, pipeline in (('test_pipeline', cfg.test_pipeline),
                           ('test_dataloader', cfg.test_dataloader.dataset.pipeline)):
        assert any(t['type'] == 'dino_mm.CheckSegAnnotation' for t in pipeline), name
        with DefaultScope.overwrite_default_scope(cfg.default_scope):
            out = Compose(_strip_like_mmseg(pipeline))(dict(img_path=image))
        assert out['data_samples'].get('gt_sem_seg') is None, name
        assert tuple(out['data_samples'].ori_shape) == IMG_HW, name


def test_check_passes_inference_samples_and_still_checks_dataset_samples(tmp_path):
    from dino_mm.datasets.segmentation import CheckSegAnnotation
    check = CheckSegAnnotation(num_classes=3)
    img = np.zeros(IMG_HW + (3, ), np.uint8)
    sample = dict(img=img, img_shape=IMG_HW, ori_shape=IMG_HW)
    assert check(dict(sample, img_path='a.jpg')) == dict(sample, img_path='a.jpg')
    assert check(dict(sample)) == sample  # inference_model on an array
    # A dataset sample whose annotation was not loaded (LoadAnnotations missing or after).
    with pytest.raises(KeyError, match=r'a\.jpg.*annotation ann/a\.png.*LoadAnnotations'):
        check(dict(sample, img_path='a.jpg', seg_map_path='ann/a.png'))
    # Loaded annotations are still checked.
    seg = np.zeros(IMG_HW, np.uint8)
    ok = dict(sample, img_path='a.jpg', seg_map_path='ann/a.png', gt_seg_map=seg)
    assert check(ok) is ok
    bad = dict(ok, gt_seg_map=np.full(IMG_HW, 7, np.uint8))
    with pytest.raises(ValueError, match=r'ann/a\.png.*\[7\]'):
        check(bad)
    with pytest.raises(ValueError, match=r'ann/a\.png.*size'):
        check(dict(ok, gt_seg_map=seg[:-1]))
