# Frozen DINO backbone + DPT depth head (official DINOv2 _dd head: readout 'project',
# post-process channels [D/8, D/4, D/2, D], 256 fusion channels, regression ReLU + min_depth).
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
        type='dino_mm.DPTDepthHead',
        embed_dims=384,
        post_process_channels=[48, 96, 192, 384],
        readout_type='project',
        channels=256,
        min_depth=1e-3,
        max_depth=10.0,
        # SigLoss 1.0 with warm-up + GradientLoss 0.5, as in a public copy of the hosted
        # dinov2_vitl14_nyu_dpt config (that file is not in the dinov2 repository).
        loss_decode=[
            dict(type='dino_mm.SigLoss', valid_mask=True, loss_weight=1.0, warm_up=True),
            dict(type='dino_mm.GradientLoss', valid_mask=True, loss_weight=0.5),
        ]),
    train_cfg=dict(),
    test_cfg=dict(mode='whole', flip=False))
