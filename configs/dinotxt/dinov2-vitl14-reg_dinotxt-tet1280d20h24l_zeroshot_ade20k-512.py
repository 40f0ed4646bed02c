# Zero-shot ADE20K semantic segmentation with the DINOv2 dino.txt release (see the DINOv3
# twin for the protocol). Its heads come in two files (vision head, text encoder): merge them
# with dino_mm.hub or pass the checkpoint of a dino_mm training run.
#   python tools/test.py configs/dinotxt/dinov2-vitl14-reg_dinotxt-tet1280d20h24l_zeroshot_ade20k-512.py \
#       DINOTXT_HEADS.pth
# With patch size 14 each 384-pixel window is stretched to 392 (28 patches), as the notebook
# stretches any image to whole patches.
_base_ = ['./dinov3-vitl16_dinotxt-tet1280d20h24l_zeroshot_ade20k-512.py']
model = dict(
    dinotxt=dict(
        vision_backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vitl14_reg'),
        backbone_checkpoint='dinov2_vitl14_reg4_pretrain.pth',
        release='dinov2'))
