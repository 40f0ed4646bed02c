# dinov3-vitl16 frozen backbone, dpt depth head, NYU.
# Published: no number in the official repositories for this head
# (reference: linear NYU-D RMSE 0.352).
# Backbone weights: checkpoints/dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth (official layout, see dino_mm.hub).
_base_ = ['../_base_/models/depth_dpt.py', '../_base_/datasets/nyu.py',
          '../_base_/schedules/depth_38k.py']
model = dict(
    backbone=dict(arch='dinov3_vitl16', out_indices=[4, 11, 17, 23],
                  out_type='featmap', norm_out=True,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth')),
    decode_head=dict(embed_dims=1024, post_process_channels=[1024] * 4,
                     channels=256, readout_type='ignore', patch_size=16,
                     norm_cfg=dict(type='SyncBN'), classify=True, n_bins=256,
                     max_depth=10.0))
