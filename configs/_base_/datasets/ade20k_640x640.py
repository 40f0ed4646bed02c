# ADE20K for the DINO "+ms" probe: the official DINOv2 multi-scale segmentation config
# trains on 640 px crops of images whose short side is resized to 640 x [1, 3] (long side
# unbounded: scale (99999999, 640)) and tests at short side 640, where the model's
# multi-scale + flip TTA (test_cfg.img_ratios) rescales further. The linear probe keeps
# ade20k.py (scale (2048, 512) x [0.5, 2], crop 512).
_base_ = ['./ade20k.py']
crop_size = (640, 640)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='dino_mm.CheckSegAnnotation', num_classes={{_base_.num_classes}}),
    dict(type='RandomResize', scale=(99999999, 640), ratio_range=(1.0, 3.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(99999999, 640), keep_ratio=True),
    # Annotations are loaded after Resize: metrics compare at the original size.
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='dino_mm.CheckSegAnnotation', num_classes={{_base_.num_classes}}),
    dict(type='PackSegInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
