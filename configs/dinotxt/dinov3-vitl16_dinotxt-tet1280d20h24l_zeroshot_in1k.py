# Zero-shot ImageNet-1k classification with dino.txt: the 1,000 class names x OpenAI's 80
# prompt templates -> class text embeddings; cosine logits with the image embeddings;
# mmpretrain's Accuracy. Eval transform: Resize(256, bicubic) + CenterCrop(224).
#   python tools/test.py configs/dinotxt/dinov3-vitl16_dinotxt-tet1280d20h24l_zeroshot_in1k.py \
#       dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth
# (the checkpoint holds the heads; model.backbone_checkpoint names the backbone file).
_base_ = [
    '../_base_/models/dinotxt_tet1280d20h24l.py', '../_base_/datasets/eval_imagenet.py',
    '../_base_/default_runtime.py'
]
model = dict(
    vision_backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vitl16'),
    backbone_checkpoint='dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth',
    release='dinov3',
    zero_shot=dict(class_names='imagenet', templates='openai_imagenet', part='full'))
test_evaluator = dict(type='mmpretrain.Accuracy', topk=(1, 5))
test_cfg = dict()
val_dataloader = None
val_cfg = None
val_evaluator = None
