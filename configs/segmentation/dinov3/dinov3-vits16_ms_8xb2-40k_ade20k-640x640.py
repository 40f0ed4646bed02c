# DINOV3 vits16 frozen, BN + 1x1 conv on the last 4 layers, multi-scale + flip TTA, ade20k.
# Published mIoU: none published.
# Backbone weights: checkpoints/dinov3_vits16_pretrain_lvd1689m-08c60483.pth (official layout, see dino_mm.hub).
_base_ = [
    '../../_base_/models/seg_ms.py', '../../_base_/datasets/ade20k_640x640.py',
    '../../_base_/schedules/seg_dinov3_40k.py'
]
model = dict(
    backbone=dict(
        arch='dinov3_vits16', out_indices=[8, 9, 10, 11],
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov3_vits16_pretrain_lvd1689m-08c60483.pth')),
    decode_head=dict(
        in_channels=[384, 384, 384, 384], in_index=[0, 1, 2, 3],
        channels=1536, num_classes=150,
        dropout_ratio=0.1))  # Dropout2d 0.1: dinov3 eval/segmentation LinearHead
