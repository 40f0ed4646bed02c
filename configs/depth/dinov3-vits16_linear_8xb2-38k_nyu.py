# dinov3-vits16 frozen backbone, linear depth head, NYU.
# Published: NYU-D RMSE 0.403 (DINOv3 model card, linear probe, frozen backbone).
_base_ = ['../_base_/models/depth_linear.py', '../_base_/datasets/nyu.py',
          '../_base_/schedules/depth_38k.py']
model = dict(
    backbone=dict(arch='dinov3_vits16', out_indices=[11],
                  out_type='featmap', norm_out=True),
    decode_head=dict(in_channels=[384] * 1, in_index=[0],
                     norm_cfg=dict(type='SyncBN'), max_depth=10.0))
