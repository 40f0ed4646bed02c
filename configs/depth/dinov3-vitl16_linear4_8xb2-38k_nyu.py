# dinov3-vitl16 frozen backbone, linear4 depth head, NYU.
# Published: no number in the official repositories for this head
# (reference: linear NYU-D RMSE 0.352).
# Backbone weights: checkpoints/dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth (official layout, see dino_mm.hub).
_base_ = ['../_base_/models/depth_linear.py', '../_base_/datasets/nyu.py',
          '../_base_/schedules/depth_38k.py']
model = dict(
    backbone=dict(arch='dinov3_vitl16', out_indices=[4, 11, 17, 23],
                  out_type='featmap', norm_out=True,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth')),
    decode_head=dict(in_channels=[1024] * 4, in_index=[0, 1, 2, 3],
                     norm_cfg=dict(type='SyncBN'), max_depth=10.0))
