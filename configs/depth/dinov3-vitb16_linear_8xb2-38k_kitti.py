# dinov3-vitb16 frozen backbone, linear depth head, KITTI.
# Published KITTI numbers: not stated in the official repositories (paper only).
_base_ = ['../_base_/models/depth_linear.py', '../_base_/datasets/kitti.py',
          '../_base_/schedules/depth_38k.py']
model = dict(
    backbone=dict(arch='dinov3_vitb16', out_indices=[11],
                  out_type='featmap', norm_out=True),
    decode_head=dict(in_channels=[768] * 1, in_index=[0],
                     norm_cfg=dict(type='SyncBN'), max_depth=80.0))
