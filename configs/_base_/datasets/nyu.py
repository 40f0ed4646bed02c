# NYU Depth v2, BTS split lists (each line: "rgb_path depth_path focal"), depth PNGs in mm.
# Layout: data/nyu/{nyu_train.txt, nyu_test.txt, <scene>/rgb_*.jpg, <scene>/sync_depth_*.png}
dataset_type = 'dino_mm.NYUDepthDataset'
data_root = 'data/nyu'
crop_size = (416, 544)  # DINOv3 NYU random crop (h, w)
meta_keys = ('img_path', 'depth_map_path', 'ori_shape', 'img_shape', 'pad_shape',
             'scale_factor', 'flip', 'flip_direction', 'focal')

train_pipeline = [
    dict(type='mmcv.LoadImageFromFile'),
    dict(type='dino_mm.LoadDepthMap'),
    # DINOv3 first cuts the fixed box (x1, y1, x2, y2) = (43, 45, 608, 472) (white NYU border);
    # not reproduced here: border pixels have depth 0 in the BTS maps and are ignored by the loss.
    dict(type='mmseg.RandomCrop', crop_size=crop_size),
    dict(type='mmseg.RandomFlip', prob=0.5),
    dict(type='dino_mm.RandomBrightness', factor_range=(0.75, 1.25)),
    dict(type='mmseg.PackSegInputs', meta_keys=meta_keys),
]
test_pipeline = [
    dict(type='mmcv.LoadImageFromFile'),
    dict(type='dino_mm.LoadDepthMap'),
    dict(type='mmseg.PackSegInputs', meta_keys=meta_keys),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='nyu_train.txt',
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='nyu_test.txt',
                 test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='dino_mm.DepthMetric', min_depth=1e-3, max_depth=10.0, crop='nyu_eigen')
test_evaluator = val_evaluator
# `tools/test.py --tta`: the official DINOv3 NYU evaluation (use_tta) averages the depth of
# the image and the flipped-back depth of its horizontal mirror. Both views keep the `flip`
# meta keys, which the estimator uses to flip the mirrored prediction back.
tta_model = dict(type='dino_mm.DepthTTAModel')
tta_pipeline = [
    dict(type='mmcv.LoadImageFromFile'),
    dict(type='dino_mm.LoadDepthMap'),
    dict(type='mmcv.TestTimeAug', transforms=[
        [dict(type='mmseg.RandomFlip', prob=0., direction='horizontal'),
         dict(type='mmseg.RandomFlip', prob=1., direction='horizontal')],
        [dict(type='mmseg.PackSegInputs', meta_keys=meta_keys)],
    ]),
]
