"""``tools/test.py --out``: a pickle gets the predictions, json / yaml the metrics."""
import glob
import os.path as osp

import mmengine
import numpy as np
import pytest
import torch
from PIL import Image

from tests.oracles import require

require('mmseg.models')

from tests.segmentation.conftest import IMG_HW  # noqa: E402
from tests.segmentation.test_end_to_end import (LINEAR_ADE, _derived_config,  # noqa: E402
                                                _load_tool, _tiny_options)


def test_out_pkl_holds_one_prediction_per_image(ade_root, tmp_path):
    config = _derived_config(tmp_path, LINEAR_ADE,
                             _tiny_options(ade_root, str(tmp_path / 'work'), 1, True, 150))
    out = str(tmp_path / 'preds.pkl')
    metrics = _load_tool('test').main([config, 'none', '--random-init',
                                       '--work-dir', str(tmp_path / 'test'),
                                       '--out', out])
    assert 0.0 <= metrics['mIoU'] <= 100.0  # the config's metric still runs
    preds = mmengine.load(out)
    images = sorted(glob.glob(osp.join(ade_root, 'images/validation/*.jpg')))
    assert isinstance(preds, list) and len(preds) == len(images) == 2
    for pred, img in zip(preds, images):
        assert pred['img_path'] == img
        seg = pred['pred_sem_seg']['data']
        assert tuple(seg.shape) == (1, *IMG_HW) == (1, *Image.open(img).size[::-1])
        assert 0 <= int(seg.min()) and int(seg.max()) < 150
        # Ground truth and the per-pixel class scores (huge at full size) are left out.
        assert 'gt_sem_seg' not in pred and 'seg_logits' not in pred
    # The recomputed mIoU of the dumped maps is the reported one.
    from mmseg.evaluation import IoUMetric
    metric = IoUMetric(iou_metrics=['mIoU'])
    metric.dataset_meta = dict(classes=[str(i) for i in range(150)])
    for pred, img in zip(preds, images):
        ann = np.asarray(Image.open(img.replace('images', 'annotations')[:-4] + '.png'))
        gt = ann.astype(np.int64) - 1
        gt[ann == 0] = 255  # reduce_zero_label
        metric.process({}, [dict(pred_sem_seg=pred['pred_sem_seg'],
                                 gt_sem_seg=dict(data=torch.from_numpy(gt)[None]))])
    assert metric.evaluate(2)['mIoU'] == pytest.approx(metrics['mIoU'])
    logs = glob.glob(str(tmp_path / 'test' / '*' / '*.json'))
    assert logs and '"mIoU"' in open(logs[0]).read()  # metrics logged in the work dir


@pytest.mark.parametrize('name', ['preds.txt', 'preds', 'metrics.csv'])
def test_out_other_extensions_are_refused(name, capsys):
    with pytest.raises(SystemExit) as err:
        _load_tool('test').parse_args([LINEAR_ADE, 'none', '--out', name])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert f'--out {name}' in msg and '.pkl' in msg and '.json' in msg
