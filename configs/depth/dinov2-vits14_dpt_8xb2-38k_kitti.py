# dinov2-vits14 frozen backbone, dpt depth head, KITTI.
# Published KITTI numbers: not stated in the official repositories (paper only).
# Backbone weights: checkpoints/dinov2_vits14_pretrain.pth (official layout, see dino_mm.hub).
_base_ = ['../_base_/models/depth_dpt.py', '../_base_/datasets/kitti.py',
          '../_base_/schedules/depth_38k.py']
model = dict(
    backbone=dict(arch='dinov2_vits14', out_indices=[2, 5, 8, 11],
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov2_vits14_pretrain.pth')),
    decode_head=dict(embed_dims=384, post_process_channels=[48, 96, 192, 384], max_depth=80.0))
