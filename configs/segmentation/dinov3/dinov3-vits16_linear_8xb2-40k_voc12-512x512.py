# DINOV3 vits16 frozen, BN + 1x1 conv on the last layer, voc12.
# Published mIoU: none published.
# Backbone weights: checkpoints/dinov3_vits16_pretrain_lvd1689m-08c60483.pth (official layout, see dino_mm.hub).
_base_ = [
    '../../_base_/models/seg_linear.py', '../../_base_/datasets/voc12.py',
    '../../_base_/schedules/seg_dinov3_40k.py'
]
model = dict(
    backbone=dict(
        arch='dinov3_vits16', out_indices=[11],
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov3_vits16_pretrain_lvd1689m-08c60483.pth')),
    decode_head=dict(
        in_channels=[384], in_index=[0],
        channels=384, num_classes=21,
        dropout_ratio=0.1))  # Dropout2d 0.1: dinov3 eval/segmentation LinearHead
