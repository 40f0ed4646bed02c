# The official DINOv3 COCO detector (Plain-DETR, hub `dinov3_vit7b16_de`): evaluation with
# the released files through `tools/test.py CONFIG none` (or the hub): dino_mm.PlainDETR,
# a windowed frozen ViT-7B, 6 + 6 layer transformer with box relative-position bias,
# two-stage proposals, 1500 queries and detections. Training it (hybrid matching):
# plain-detr_dinov3-vit7b16-frozen_8xb2-12e_coco.py.
# Files: checkpoints/dinov3_vit7b16_coco2017_detr_head-b0235ff7.pth (head) and the
# official backbone; each is looked up like the hub does ($DINO_MM_WEIGHTS,
# ~/.cache/dino_mm/weights) when the path does not exist.
# The official evaluation resize is not in the dinov3 repository; this config keeps the
# mmdet DETR test resize of configs/_base_/datasets/coco_detection.py (1333 x 800).
# Published COCO box AP of this detector: in the DINOv3 paper only (not checked here).
_base_ = ['../_base_/datasets/coco_detection.py', '../_base_/det_runtime.py']
model = dict(
    type='dino_mm.PlainDETR',
    backbone=dict(
        type='dino_mm.DinoVisionTransformer', arch='dinov3_vit7b16',
        init_cfg=dict(type='Pretrained',
                      checkpoint='checkpoints/dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth')),
    init_cfg=dict(type='Pretrained',
                  checkpoint='checkpoints/dinov3_vit7b16_coco2017_detr_head-b0235ff7.pth'))
train_dataloader = None  # evaluation of the released files; training: the -frozen_ config
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
