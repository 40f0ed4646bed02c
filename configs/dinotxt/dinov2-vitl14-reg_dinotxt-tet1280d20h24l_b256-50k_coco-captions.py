# dino.txt training on COCO-Captions with the frozen DINOv2 ViT-L/14 (4 registers) of the
# DINOv2 release; head keys in the DINOv2 layout (visual_model.head.block_list.*).
_base_ = ['./dinov3-vitl16_dinotxt-tet1280d20h24l_b256-50k_coco-captions.py']
model = dict(
    vision_backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vitl14_reg'),
    backbone_checkpoint='dinov2_vitl14_reg4_pretrain.pth',
    release='dinov2')
