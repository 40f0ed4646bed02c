# dinov3-vits16 frozen backbone, linear depth head, KITTI.
# Published KITTI numbers: not stated in the official repositories (paper only).
# Backbone weights: checkpoints/dinov3_vits16_pretrain_lvd1689m-08c60483.pth (official layout, see dino_mm.hub).
_base_ = ['../_base_/models/depth_linear.py', '../_base_/datasets/kitti.py',
          '../_base_/schedules/depth_38k.py']
model = dict(
    backbone=dict(arch='dinov3_vits16', out_indices=[11],
                  out_type='featmap', norm_out=True,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov3_vits16_pretrain_lvd1689m-08c60483.pth')),
    decode_head=dict(in_channels=[384] * 1, in_index=[0],
                     norm_cfg=dict(type='SyncBN'), max_depth=80.0))
