# dinov3-vit7b16 frozen backbone, dpt depth head, NYU.
# Published: no number in the official repositories for this head
# (reference: linear NYU-D RMSE 0.309).
# Backbone weights: checkpoints/dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth (official layout, see dino_mm.hub).
_base_ = ['../_base_/models/depth_dpt.py', '../_base_/datasets/nyu.py',
          '../_base_/schedules/depth_38k.py']
model = dict(
    backbone=dict(arch='dinov3_vit7b16', out_indices=[9, 19, 29, 39],
                  out_type='featmap', norm_out=True,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth')),
    decode_head=dict(embed_dims=4096, post_process_channels=[2048] * 4,
                     channels=512, readout_type='ignore', patch_size=16,
                     norm_cfg=dict(type='SyncBN'), classify=True, n_bins=256,
                     max_depth=10.0))
