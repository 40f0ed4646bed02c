# DINOV3 vits16plus frozen, BN + 1x1 conv on the last layer, ade20k.
# Published mIoU: 48.8 (DINOv3 model card).
# Backbone weights: checkpoints/dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth (official layout, see dino_mm.hub).
_base_ = [
    '../../_base_/models/seg_linear.py', '../../_base_/datasets/ade20k.py',
    '../../_base_/schedules/seg_dinov3_40k.py'
]
model = dict(
    backbone=dict(
        arch='dinov3_vits16plus', out_indices=[11],
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth')),
    decode_head=dict(
        in_channels=[384], in_index=[0],
        channels=384, num_classes=150,
        dropout_ratio=0.1))  # Dropout2d 0.1: dinov3 eval/segmentation LinearHead
