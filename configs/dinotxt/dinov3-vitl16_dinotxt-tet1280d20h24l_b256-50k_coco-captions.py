# dino.txt training of the official recipe on COCO-Captions: frozen DINOv3 ViT-L/16,
# 256 image-caption pairs per GPU, 50k iterations. Launch with tools/train.py,
# tools/dist_train.sh or tools/slurm_train.sh; set the backbone file, e.g.
#   --cfg-options model.backbone_checkpoint=dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth
_base_ = [
    '../_base_/models/dinotxt_tet1280d20h24l.py', '../_base_/datasets/coco_captions.py',
    '../_base_/schedules/dinotxt_50k.py', '../_base_/default_runtime.py'
]
model = dict(
    vision_backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vitl16'),
    backbone_checkpoint='dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth',
    release='dinov3')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=500, max_keep_ckpts=5))
