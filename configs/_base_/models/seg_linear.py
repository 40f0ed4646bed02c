# DINO linear segmentation probe: frozen ViT, last layer's patch tokens (final norm),
# BN + 1x1 conv (official DINOv2 "linear" / DINOv3 linear head). Leaves set the
# arch, out_indices, in_channels/channels, num_classes and the backbone checkpoint.
# Only `model` is defined here: mmengine forbids keys repeated across `_base_` files.
model = dict(
    type='dino_mm.DinoEncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=(512, 512)),
    freeze_backbone=True,
    pad_to_patch=True,
    backbone=dict(
        type='dino_mm.DinoVisionTransformer',
        arch='dinov2_vits14',
        out_indices=[11],
        out_type='featmap',
        norm_out=True),
    decode_head=dict(
        type='dino_mm.DinoLinearHead',
        in_channels=[384],
        in_index=[0],
        input_transform='resize_concat',
        channels=384,
        dropout_ratio=0.0,
        num_classes=150,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
