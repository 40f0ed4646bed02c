# dinov2-vits14 frozen backbone, linear4 depth head, NYU.
# Published: NYU-D RMSE 0.417 (DINOv2 model card, linear head on 4 layers).
# Backbone weights: checkpoints/dinov2_vits14_pretrain.pth (official layout, see dino_mm.hub).
_base_ = ['../_base_/models/depth_linear.py', '../_base_/datasets/nyu.py',
          '../_base_/schedules/depth_38k.py']
model = dict(
    backbone=dict(arch='dinov2_vits14', out_indices=[2, 5, 8, 11],
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov2_vits14_pretrain.pth')),
    decode_head=dict(in_channels=[768] * 4, in_index=[0, 1, 2, 3], max_depth=10.0))
