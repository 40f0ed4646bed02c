# DINOV3 vitl16 frozen, BN + 1x1 conv on the last layer, ade20k.
# Published mIoU: 54.9 (DINOv3 model card).
# Backbone weights: checkpoints/dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth (official layout, see dino_mm.hub).
_base_ = [
    '../../_base_/models/seg_linear.py', '../../_base_/datasets/ade20k.py',
    '../../_base_/schedules/seg_dinov3_40k.py'
]
model = dict(
    backbone=dict(
        arch='dinov3_vitl16', out_indices=[23],
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth')),
    decode_head=dict(
        in_channels=[1024], in_index=[0],
        channels=1024, num_classes=150,
        dropout_ratio=0.1))  # Dropout2d 0.1: dinov3 eval/segmentation LinearHead
