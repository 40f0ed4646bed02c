# dino.txt (official DINOTxtConfig of both releases): frozen DINO backbone + 2 trainable
# head blocks (drop path 0.3), image embedding = [class token, mean patch token] (2048 for
# a ViT-L), the tet1280d20h24l causal text transformer (trained), argmax (end-of-text)
# pooling + linear projection, learnable logit scale ln(1/0.07) clamped to [0, ln 100].
# Leaves set the vision backbone's arch, model.backbone_checkpoint and model.release.
model = dict(
    type='dino_mm.DINOTxt',
    vision_backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vitl16'),
    backbone_checkpoint=None,
    text_backbone=dict(type='dino_mm.TextTransformer', context_length=77, vocab_size=49408,
                       dim=1280, num_heads=20, num_layers=24, ffn_ratio=4.0, is_causal=True,
                       ls_init_value=None, dropout_prob=0.0),
    embed_dim=2048,
    vision=dict(freeze_backbone=True, num_head_blocks=2, head_drop_path=0.3,
                use_class_token=True, use_patch_tokens=True, patch_token_layer=1,
                patch_pooler='mean', use_linear_projection=False),
    text=dict(freeze_backbone=False, num_head_blocks=0, head_is_causal=False,
              head_drop_prob=0.0, pooler='argmax', use_linear_projection=True),
    release='dinov3',
    tokenizer=dict(bpe_path=None),  # None: the CLIP BPE file shipped by open_clip
    init_logit_scale=2.659260036932778,  # ln(1 / 0.07)
    freeze_logit_scale=False,
    zero_shot=dict(class_names='imagenet', templates='openai_imagenet', part='full'),
    data_preprocessor=dict(type='ImgDataPreprocessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True))
