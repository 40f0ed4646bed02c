# mmdet DINO-4scale detector with a frozen dinov2_vitg14 backbone
# (blocks [9, 19, 29, 39] -> simple feature pyramid at strides 7/14/28/56).
# No official COCO number is published for this backbone size (only the DINOv3 paper
# gives one, for the 7B with a Plain-DETR detector).
_base_ = [
    '../_base_/models/det_dino-4scale_vit-sfp.py', '../_base_/datasets/coco_detection.py',
    '../_base_/schedules/det_12e.py', '../_base_/det_runtime.py'
]
model = dict(
    data_preprocessor=dict(pad_size_divisor=56),
    backbone=dict(arch='dinov2_vitg14', out_indices=[9, 19, 29, 39], frozen_stages=40,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov2_vitg14_pretrain.pth')),
    neck=dict(in_channels=1536))
