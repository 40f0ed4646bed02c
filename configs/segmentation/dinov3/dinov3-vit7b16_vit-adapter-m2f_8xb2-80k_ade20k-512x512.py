# DINOV3 vit7b16 (frozen) + ViT-Adapter + Mask2Former, ADE20K.
# Published mIoU: none in the dinov3 README (DINOv3 paper table not checked).
# Backbone weights: checkpoints/dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth.
_base_ = [
    '../../_base_/models/seg_m2f.py', '../../_base_/datasets/ade20k.py',
    '../../_base_/schedules/seg_m2f_80k.py'
]
custom_imports = dict(imports=['mmdet.models', 'dino_mm.datasets.segmentation'],
                      allow_failed_imports=False)
model = dict(
    backbone=dict(
        backbone=dict(arch='dinov3_vit7b16', init_cfg=dict(
            type='Pretrained', checkpoint='checkpoints/dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth')),
        interaction_indexes=[9, 19, 29, 39], deform_num_heads=32),
    decode_head=dict(
        in_channels=[4096, 4096, 4096, 4096],
        feat_channels=2048, out_channels=2048,
        pixel_decoder=dict(
            encoder=dict(layer_cfg=dict(self_attn_cfg=dict(embed_dims=2048),
                                        ffn_cfg=dict(embed_dims=2048,
                                                     feedforward_channels=4096))),
            positional_encoding=dict(num_feats=1024)),
        positional_encoding=dict(num_feats=1024),
        transformer_decoder=dict(layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=2048),
            cross_attn_cfg=dict(embed_dims=2048),
            ffn_cfg=dict(embed_dims=2048, feedforward_channels=4096)))),
    test_cfg=dict(mode='slide', crop_size=(896, 896), stride=(596, 596),
        img_ratios=[0.9, 0.95, 1.0, 1.05, 1.1]))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(3584, 896), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='dino_mm.CheckSegAnnotation', num_classes=150),
    dict(type='PackSegInputs')
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
