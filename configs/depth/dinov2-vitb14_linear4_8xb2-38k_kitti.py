# dinov2-vitb14 frozen backbone, linear4 depth head, KITTI.
# Published KITTI numbers: not stated in the official repositories (paper only).
# Backbone weights: checkpoints/dinov2_vitb14_pretrain.pth (official layout, see dino_mm.hub).
_base_ = ['../_base_/models/depth_linear.py', '../_base_/datasets/kitti.py',
          '../_base_/schedules/depth_38k.py']
model = dict(
    backbone=dict(arch='dinov2_vitb14', out_indices=[2, 5, 8, 11],
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov2_vitb14_pretrain.pth')),
    decode_head=dict(in_channels=[1536] * 4, in_index=[0, 1, 2, 3], max_depth=80.0))
