"""mmpretrain's own inference entry points on the shipped classification / eval configs.

``ImageClassificationInferencer`` and ``FeatureExtractor`` load the image themselves and
drop the test-pipeline step typed exactly ``'LoadImageFromFile'``; a step typed
``'mmpretrain.LoadImageFromFile'`` stays and fails with ``KeyError: 'img_path'``. The API
runs in a fresh interpreter, as in a user's script, on the configs with a tiny ViT.
"""
import glob
import os
import os.path as osp
import re
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

pytest.importorskip('mmpretrain')

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(ROOT, 'configs/demo/vit-tiny_cls_digits.py')
KNN = osp.join(ROOT, 'configs/eval/knn/dinov3-vits16_knn_8xb256_in1k.py')
LINEAR = osp.join(ROOT, 'configs/eval/linear/dinov2-vits14_linear-grid_8xb128-12.5k_in1k.py')
# Every config whose test pipeline is mmpretrain's (what its inferencers read).
MMPRETRAIN_LEAVES = sorted(glob.glob(osp.join(ROOT, 'configs/eval/*/*.py'))) + [DEMO]

# A user's script: the mmpretrain API is imported first; dino_mm is only imported when
# the config's 'dino_mm.' types are looked up.
SCRIPT = textwrap.dedent('''
    from mmpretrain import FeatureExtractor, ImageClassificationInferencer, get_model
    import sys
    import torch
    from mmengine.config import Config
    from mmengine.dataset import Compose, default_collate
    from mmengine.registry import DefaultScope

    demo, knn, linear, image, small = sys.argv[1:6]
    tiny = dict(depth=4, embed_dim=32, num_heads=2, img_size=56)

    # Classification: the demo ImageClassifier (10 classes, 32 px images, no resize).
    result = ImageClassificationInferencer(demo, pretrained=False, device='cpu')(small)[0]
    assert 0 <= result['pred_label'] < 10 and len(result['pred_scores']) == 10, result
    feats = FeatureExtractor(demo, pretrained=False, device='cpu')(small)[0]
    assert [tuple(f.shape) for f in feats] == [(64, )], [f.shape for f in feats]

    # Frozen-feature eval (k-NN / logreg model): the features equal those of the config's
    # own dataset pipeline (what tools/test.py runs), with its LoadImageFromFile step.
    extractor = FeatureExtractor(knn, pretrained=False, device='cpu', backbone=tiny)
    feat = extractor(image)[0]
    assert tuple(feat.shape) == (32, ), feat.shape
    cfg = Config.fromfile(knn)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        sample = Compose(cfg.test_dataloader.dataset.pipeline)(dict(img_path=image))
    model = extractor.model
    batch = model.data_preprocessor(default_collate([sample]), False)
    assert torch.equal(model.extract_feat(batch['inputs'])[0], feat)

    # get_model + FeatureExtractor on the linear-probe grid model (last 4 blocks).
    model = get_model(linear, device='cpu', backbone=tiny)
    blocks = FeatureExtractor(model, device='cpu')(image)[0]
    assert len(blocks) == 4 and tuple(blocks[0][1].shape) == (32, ), blocks[0][1].shape
    print('OK')
''')


def test_mmpretrain_inferencers_in_a_fresh_process(tmp_path, real_images):
    image, small = tmp_path / 'coffee.jpg', tmp_path / 'coffee_32.png'
    Image.fromarray(real_images['coffee']).resize((80, 60), Image.BILINEAR).save(image)
    Image.fromarray(real_images['coffee']).resize((32, 32), Image.BILINEAR).save(small)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH')) if p)
    proc = subprocess.run([sys.executable, '-c', SCRIPT, DEMO, KNN, LINEAR, str(image), str(small)],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert 'OK' in proc.stdout


def test_no_config_types_the_loader_with_a_prefix():
    typed = re.compile(r'''type['"]?\s*[=:]\s*['"]mmpretrain\.LoadImageFromFile''')
    offenders = [p for p in glob.glob(osp.join(ROOT, 'configs/**/*.py'), recursive=True)
                 if typed.search(open(p).read())]
    assert not offenders, offenders


def test_all_eval_leaves_present():
    assert len(MMPRETRAIN_LEAVES) == 3 * 14 + 1


@pytest.mark.parametrize('path', MMPRETRAIN_LEAVES, ids=osp.basename)
def test_inferencers_strip_every_loader(path):
    """What the inferencers keep of each test pipeline loads no file; tools/test.py
    builds the full pipeline (with the loader) in the config's scope."""
    from mmengine.config import Config
    from mmengine.dataset import Compose
    from mmengine.registry import DefaultScope
    from mmpretrain.datasets import remove_transform
    cfg = Config.fromfile(path)
    pipeline = cfg.test_dataloader.dataset.pipeline
    assert [t['type'] for t in pipeline].count('LoadImageFromFile') == 1, pipeline
    kept = remove_transform(list(pipeline), 'LoadImageFromFile')
    assert not [t['type'] for t in kept if 'LoadImage' in str(t['type'])], kept
    assert len(kept) == len(pipeline) - 1
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        first = Compose(pipeline).transforms[0]
    from mmcv.transforms import LoadImageFromFile
    assert isinstance(first, LoadImageFromFile)
