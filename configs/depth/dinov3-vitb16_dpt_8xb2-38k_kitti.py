# dinov3-vitb16 frozen backbone, dpt depth head, KITTI.
# Published KITTI numbers: not stated in the official repositories (paper only).
_base_ = ['../_base_/models/depth_dpt.py', '../_base_/datasets/kitti.py',
          '../_base_/schedules/depth_38k.py']
model = dict(
    backbone=dict(arch='dinov3_vitb16', out_indices=[2, 5, 8, 11],
                  out_type='featmap', norm_out=True),
    decode_head=dict(embed_dims=768, post_process_channels=[768] * 4,
                     channels=256, readout_type='ignore', patch_size=16,
                     norm_cfg=dict(type='SyncBN'), classify=True, n_bins=256,
                     max_depth=80.0))
