# dinov2-vitg14 frozen backbone, dpt depth head, NYU.
# Published: no number in the official repositories for this head
# (reference: linear4 NYU-D RMSE 0.298).
# Backbone weights: checkpoints/dinov2_vitg14_pretrain.pth (official layout, see dino_mm.hub).
_base_ = ['../_base_/models/depth_dpt.py', '../_base_/datasets/nyu.py',
          '../_base_/schedules/depth_38k.py']
model = dict(
    backbone=dict(arch='dinov2_vitg14', out_indices=[9, 19, 29, 39],
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov2_vitg14_pretrain.pth')),
    decode_head=dict(embed_dims=1536, post_process_channels=[192, 384, 768, 1536], max_depth=10.0))
