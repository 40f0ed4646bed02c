# Frozen DINO backbone + official linear classification-regression depth head (256 "UD" bins,
# (ReLU+0.1)-normalised probabilities). DINOv2 flavour: patch maps with their class token,
# no backbone norm, no BatchNorm (the official hub head has it commented out).
model = dict(
    type='dino_mm.DinoDepthEstimator',
    data_preprocessor=dict(type='dino_mm.DepthDataPreProcessor'),
    pad_to_patch='auto',
    freeze_backbone=True,
    backbone=dict(
        type='dino_mm.DinoVisionTransformer',
        arch='dinov2_vits14',
        out_indices=[2, 5, 8, 11],
        out_type='cls_featmap',
        # No init_cfg here: every leaf sets init_cfg=dict(type='Pretrained',
        # checkpoint='checkpoints/<official file>'); a missing file is an error, never a
        # silently random frozen backbone.
        norm_out=False),
    decode_head=dict(
        type='dino_mm.LinearDepthHead',
        in_channels=[768] * 4,
        in_index=[0, 1, 2, 3],
        upsample=4,
        classify=True,
        n_bins=256,
        bins_strategy='UD',
        norm_strategy='linear',
        min_depth=1e-3,
        max_depth=10.0,
        align_corners=False,
        loss_decode=[dict(type='dino_mm.SigLoss', valid_mask=True, loss_weight=1.0)]),
    train_cfg=dict(),
    test_cfg=dict(mode='whole', flip=False))
