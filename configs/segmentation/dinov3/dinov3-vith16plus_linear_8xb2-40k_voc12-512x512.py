# DINOV3 vith16plus frozen, BN + 1x1 conv on the last layer, voc12.
# Published mIoU: none published.
# Backbone weights: checkpoints/dinov3_vith16plus_pretrain_lvd1689m-7c1da9a5.pth (official layout, see dino_mm.hub).
_base_ = [
    '../../_base_/models/seg_linear.py', '../../_base_/datasets/voc12.py',
    '../../_base_/schedules/seg_dinov3_40k.py'
]
model = dict(
    backbone=dict(
        arch='dinov3_vith16plus', out_indices=[31],
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov3_vith16plus_pretrain_lvd1689m-7c1da9a5.pth')),
    decode_head=dict(
        in_channels=[1280], in_index=[0],
        channels=1280, num_classes=21,
        dropout_ratio=0.1))  # Dropout2d 0.1: dinov3 eval/segmentation LinearHead
