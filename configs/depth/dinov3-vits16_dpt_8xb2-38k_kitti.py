# dinov3-vits16 frozen backbone, dpt depth head, KITTI.
# Published KITTI numbers: not stated in the official repositories (paper only).
# Backbone weights: checkpoints/dinov3_vits16_pretrain_lvd1689m-08c60483.pth (official layout, see dino_mm.hub).
_base_ = ['../_base_/models/depth_dpt.py', '../_base_/datasets/kitti.py',
          '../_base_/schedules/depth_38k.py']
model = dict(
    backbone=dict(arch='dinov3_vits16', out_indices=[2, 5, 8, 11],
                  out_type='featmap', norm_out=True,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov3_vits16_pretrain_lvd1689m-08c60483.pth')),
    decode_head=dict(embed_dims=384, post_process_channels=[384] * 4,
                     channels=256, readout_type='ignore', patch_size=16,
                     norm_cfg=dict(type='SyncBN'), classify=True, n_bins=256,
                     max_depth=80.0))
