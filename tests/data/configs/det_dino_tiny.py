# A tiny mmdet DINO + dino_mm ViT detector for CPU tests (inherits the real bases).
_base_ = [
    '../../../configs/_base_/models/det_dino-4scale_vit-sfp.py',
    '../../../configs/_base_/datasets/coco_detection.py',
    '../../../configs/_base_/schedules/det_12e.py', '../../../configs/_base_/det_runtime.py'
]
data_root = 'data/tiny_coco/'
classes = ('circle', 'square')
E = 256  # mmdet's DINO decoder hard-codes 128 sine features per coordinate (4 x 128 = 2E)
model = dict(
    num_queries=20,
    data_preprocessor=dict(pad_size_divisor=64),
    backbone=dict(arch='dinov3_vits16', embed_dim=48, depth=4, num_heads=2,
                  out_indices=[0, 1, 2, 3], frozen_stages=-1),
    neck=dict(in_channels=48, out_channels=E),
    encoder=dict(num_layers=1, layer_cfg=dict(
        self_attn_cfg=dict(embed_dims=E, num_heads=2, num_points=2),
        ffn_cfg=dict(embed_dims=E, feedforward_channels=64))),
    decoder=dict(num_layers=1, layer_cfg=dict(
        self_attn_cfg=dict(embed_dims=E, num_heads=2),
        cross_attn_cfg=dict(embed_dims=E, num_heads=2, num_points=2),
        ffn_cfg=dict(embed_dims=E, feedforward_channels=64))),
    positional_encoding=dict(num_feats=E // 2),
    bbox_head=dict(num_classes=2, embed_dims=E),
    dn_cfg=dict(group_cfg=dict(num_dn_queries=10)),
    test_cfg=dict(max_per_img=20))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False, batch_sampler=None,
    dataset=dict(data_root=data_root, ann_file='annotations/instances_train2017.json',
                 metainfo=dict(classes=classes), pipeline=train_pipeline,
                 filter_cfg=dict(filter_empty_gt=False, min_size=0)))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='annotations/instances_val2017.json',
                 metainfo=dict(classes=classes), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=1, val_interval=10)
param_scheduler = []
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
log_processor = dict(window_size=1)
