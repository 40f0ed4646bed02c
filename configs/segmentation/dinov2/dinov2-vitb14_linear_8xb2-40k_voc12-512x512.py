# DINOV2 vitb14 frozen, BN + 1x1 conv on the last layer, voc12.
# Published mIoU: none in the DINOv2 README or model card (paper table not checked).
# Backbone weights: checkpoints/dinov2_vitb14_pretrain.pth (official layout, see dino_mm.hub).
_base_ = [
    '../../_base_/models/seg_linear.py', '../../_base_/datasets/voc12.py',
    '../../_base_/schedules/seg_dinov2_40k.py'
]
model = dict(
    backbone=dict(
        arch='dinov2_vitb14', out_indices=[11],
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov2_vitb14_pretrain.pth')),
    decode_head=dict(
        in_channels=[768], in_index=[0],
        channels=768, num_classes=21))
