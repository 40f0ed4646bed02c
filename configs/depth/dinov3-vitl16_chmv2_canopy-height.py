# dinov3-vitl16 (SAT-493M) + CHMv2 DPT head: canopy height in metres from RGB
# satellite / aerial tiles (official dinov3_vitl16_chmv2); inference and evaluation only.
# Data layout: see ../_base_/datasets/canopy_height.py (a "rgb_path chm_path" list,
# 16-bit PNG heights in cm). Weights, official files (also found in $DINO_MM_WEIGHTS):
#   checkpoints/dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth (backbone)
#   checkpoints/dinov3_vitl16_chmv2_dpt_head-3703d643.pth (head)
# Evaluate: python tools/test.py <this config> none  (both files load through init_cfg).
# As the official notebook: RGB/255 normalised with mean (0.42, 0.411, 0.296) and std
# (0.213, 0.156, 0.143), center padding to 16 px, whole-image prediction resized to the input size.
_base_ = ['../_base_/default_runtime.py', '../_base_/datasets/canopy_height.py']
model = dict(
    type='dino_mm.DinoDepthEstimator',
    data_preprocessor=dict(type='dino_mm.DepthDataPreProcessor',
                           mean=[107.1, 104.805, 75.48],
                           std=[54.315, 39.78, 36.465]),
    pad_to_patch='auto',
    freeze_backbone=True,
    backbone=dict(
        type='dino_mm.DinoVisionTransformer', arch='dinov3_vitl16',
        out_indices=[5, 11, 17, 23], out_type='cls_featmap', norm_out=True,
        # the SAT-493M file keeps its (training-only) local-crop class-token norm
        untie_global_and_local_cls_norm=True,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth')),
    decode_head=dict(
        type='dino_mm.DPTDepthHead', embed_dims=1024,
        post_process_channels=[128, 256, 512, 1024], channels=256, readout_type='project',
        patch_size=16, use_bias=True, projection_after_fusion=False, n_hidden_channels=128,
        output_align_corners=True, classify=True, n_bins=256, bins_strategy='chmv2_mixlog',
        norm_strategy='chmv2_mixlog', min_depth=0.001, max_depth=96.0, loss_decode=[],
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov3_vitl16_chmv2_dpt_head-3703d643.pth')),
    test_cfg=dict(mode='whole', flip=False))
default_hooks = dict(visualization=dict(type='dino_mm.DepthVisualizationHook', draw=False))
