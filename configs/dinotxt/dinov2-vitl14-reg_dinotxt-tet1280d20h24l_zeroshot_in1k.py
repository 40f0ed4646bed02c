# Zero-shot ImageNet-1k classification with the DINOv2 dino.txt release. Its heads come in
# two files (vision head, text encoder): merge them with dino_mm.hub or pass the checkpoint
# of a dino_mm training run.
_base_ = ['./dinov3-vitl16_dinotxt-tet1280d20h24l_zeroshot_in1k.py']
model = dict(
    vision_backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vitl14_reg'),
    backbone_checkpoint='dinov2_vitl14_reg4_pretrain.pth',
    release='dinov2')
