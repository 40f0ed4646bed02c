# DINOV2 vitg14 (frozen) + ViT-Adapter + Mask2Former, ADE20K.
# Published mIoU: 60.2 (DINOv2 paper, frozen ViT-g + ViT-Adapter + M2F).
# Backbone weights: checkpoints/dinov2_vitg14_pretrain.pth.
_base_ = [
    '../../_base_/models/seg_m2f.py', '../../_base_/datasets/ade20k.py',
    '../../_base_/schedules/seg_m2f_80k.py'
]
custom_imports = dict(imports=['mmdet.models', 'dino_mm.datasets.segmentation'],
                      allow_failed_imports=False)
model = dict(
    backbone=dict(
        backbone=dict(arch='dinov2_vitg14', init_cfg=dict(
            type='Pretrained', checkpoint='checkpoints/dinov2_vitg14_pretrain.pth')),
        interaction_indexes=[9, 19, 29, 39], deform_num_heads=24),
    decode_head=dict(
        in_channels=[1536, 1536, 1536, 1536]),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
