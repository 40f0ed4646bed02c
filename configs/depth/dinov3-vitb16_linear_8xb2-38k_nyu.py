# dinov3-vitb16 frozen backbone, linear depth head, NYU.
# Published: NYU-D RMSE 0.373 (DINOv3 model card, linear probe, frozen backbone).
# Backbone weights: checkpoints/dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth (official layout, see dino_mm.hub).
_base_ = ['../_base_/models/depth_linear.py', '../_base_/datasets/nyu.py',
          '../_base_/schedules/depth_38k.py']
model = dict(
    backbone=dict(arch='dinov3_vitb16', out_indices=[11],
                  out_type='featmap', norm_out=True,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth')),
    decode_head=dict(in_channels=[768] * 1, in_index=[0],
                     norm_cfg=dict(type='SyncBN'), max_depth=10.0))
