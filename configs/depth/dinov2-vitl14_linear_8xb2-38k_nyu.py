# dinov2-vitl14 frozen backbone, linear depth head, NYU.
# Published: no number in the official repositories for this head
# (reference: linear4 NYU-D RMSE 0.333).
# Backbone weights: checkpoints/dinov2_vitl14_pretrain.pth (official layout, see dino_mm.hub).
_base_ = ['../_base_/models/depth_linear.py', '../_base_/datasets/nyu.py',
          '../_base_/schedules/depth_38k.py']
model = dict(
    backbone=dict(arch='dinov2_vitl14', out_indices=[23],
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov2_vitl14_pretrain.pth')),
    decode_head=dict(in_channels=[2048] * 1, in_index=[0], max_depth=10.0))
