# DINOV3 vit7b16 frozen, BN + 1x1 conv on the last 4 layers, multi-scale + flip TTA, voc12.
# Published mIoU: none published.
# Backbone weights: checkpoints/dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth (official layout, see dino_mm.hub).
_base_ = [
    '../../_base_/models/seg_ms.py', '../../_base_/datasets/voc12_640x640.py',
    '../../_base_/schedules/seg_dinov3_40k.py'
]
model = dict(
    backbone=dict(
        arch='dinov3_vit7b16', out_indices=[36, 37, 38, 39],
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth')),
    decode_head=dict(
        in_channels=[4096, 4096, 4096, 4096], in_index=[0, 1, 2, 3],
        channels=16384, num_classes=21,
        dropout_ratio=0.1))  # Dropout2d 0.1: dinov3 eval/segmentation LinearHead
