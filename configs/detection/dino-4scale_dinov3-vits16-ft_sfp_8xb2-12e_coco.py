# mmdet DINO-4scale detector with a fine-tuned dinov3_vits16 backbone
# (blocks [2, 5, 8, 11] -> simple feature pyramid at strides 8/16/32/64).
# No official COCO number is published for this backbone size (only the DINOv3 paper
# gives one, for the 7B with a Plain-DETR detector).
_base_ = [
    '../_base_/models/det_dino-4scale_vit-sfp.py', '../_base_/datasets/coco_detection.py',
    '../_base_/schedules/det_12e.py', '../_base_/det_runtime.py'
]
model = dict(
    data_preprocessor=dict(pad_size_divisor=64),
    backbone=dict(arch='dinov3_vits16', out_indices=[2, 5, 8, 11], frozen_stages=-1,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov3_vits16_pretrain_lvd1689m-08c60483.pth')),
    neck=dict(in_channels=384))
