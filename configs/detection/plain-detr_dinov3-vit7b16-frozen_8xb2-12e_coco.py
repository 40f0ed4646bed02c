# Train the official DINOv3 COCO detector (Plain-DETR, hub `dinov3_vit7b16_de`) on a frozen
# DINOv3 ViT-7B/16: the detector of plain-detr_dinov3-vit7b16_official_coco.py with a random
# head, trained with dino_mm.PlainDETRCriterion (hybrid matching: 1500 one-to-one queries,
# 1500 one-to-many queries matched to the targets repeated 6 times; focal 2 / delta-L1 1 /
# GIoU 2, on every decoder layer and the two-stage proposals).
# The dinov3 repository releases the detector, not its training recipe; the optimisation
# below is Plain-DETR's published recipe (AdamW 2e-4, weight decay 0.05 except norms and
# biases, gradient clipping 0.1, 1000 warm-up iterations, lr x0.1 at epoch 11 of 12) and the
# data pipeline mmdet's DETR augmentation (flip, multi-scale resize or resize-crop-resize).
# Evaluate with tools/test.py and the same config.
_base_ = ['./plain-detr_dinov3-vit7b16_official_coco.py']
# The head starts from the official head init; the ViT is loaded and frozen whole (its own
# frozen_stages keeps every block, and the RoPE augmentation, in eval mode in training).
model = dict(init_cfg=None, backbone=dict(frozen_stages=40))

_scales = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333),
           (672, 1333), (704, 1333), (736, 1333), (768, 1333), (800, 1333)]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoice', transforms=[
        [dict(type='RandomChoiceResize', scales=_scales, keep_ratio=True)],
        [dict(type='RandomChoiceResize', scales=[(400, 4200), (500, 4200), (600, 4200)],
              keep_ratio=True),
         dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
              allow_negative_crop=True),
         dict(type='RandomChoiceResize', scales=_scales, keep_ratio=True)]]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(
    _delete_=True, batch_size=2, num_workers=2, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='mmdet.AspectRatioBatchSampler'),
    dataset=dict(type='dino_mm.CheckedCocoDataset', data_root='data/coco/',
                 ann_file='annotations/instances_train2017.json',
                 data_prefix=dict(img='train2017/'),
                 filter_cfg=dict(filter_empty_gt=False, min_size=32),
                 on_invalid='skip', pipeline=train_pipeline))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=0.05),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[11], gamma=0.1)]
auto_scale_lr = dict(base_batch_size=16)
