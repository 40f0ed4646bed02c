# KITTI Eigen split, BTS lists ("rgb_path depth_path focal"; depth "None" = no ground truth,
# skipped). Depth PNGs store depth*256. Images under data/kitti/raw, ground truth under
# data/kitti/gt (BTS "data_path" / "gt_path").
dataset_type = 'dino_mm.KITTIDepthDataset'
data_root = 'data/kitti'
crop_size = (352, 704)
meta_keys = ('img_path', 'depth_map_path', 'ori_shape', 'img_shape', 'pad_shape',
             'scale_factor', 'flip', 'flip_direction', 'focal')

train_pipeline = [
    dict(type='mmcv.LoadImageFromFile'),
    dict(type='dino_mm.LoadDepthMap'),
    dict(type='dino_mm.KBCrop', height=352, width=1216),
    dict(type='mmseg.RandomCrop', crop_size=crop_size),
    dict(type='mmseg.RandomFlip', prob=0.5),
    dict(type='mmseg.PackSegInputs', meta_keys=meta_keys),
]
# Evaluation on the full frame; the metric applies the Garg crop.
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
    dataset=dict(type=dataset_type, data_root=data_root,
                 ann_file='eigen_train_files_with_gt.txt',
                 data_prefix=dict(img_path='raw', depth_map_path='gt'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root,
                 ann_file='eigen_test_files_with_gt.txt',
                 data_prefix=dict(img_path='raw', depth_map_path='gt'),
                 test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='dino_mm.DepthMetric', min_depth=1e-3, max_depth=80.0,
                     crop='kitti_garg')
test_evaluator = val_evaluator
# `tools/test.py --tta`: image + horizontal mirror, the mirrored depth flipped back and the
# two depth maps averaged (the flip TTA of the official DINOv3 depth evaluation).
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
