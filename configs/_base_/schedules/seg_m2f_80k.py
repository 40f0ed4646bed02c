# Mask2Former + ViT-Adapter schedule: mmseg's Mask2Former recipe (AdamW 1e-4, wd 0.05,
# poly 0.9, grad clip 0.01, no decay on embeddings / norms). Not the official recipe: the
# DINOv2-g M2F training config is only hosted next to its weights (not read), and the dinov3
# repository ships an M2F inference config only, so the official length and lr are unknown;
# 80k iterations follows the ViT-Adapter ADE20K recipe.
_base_ = ['./seg_runtime.py']
embed_multi = dict(lr_mult=1.0, decay_mult=0.0)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    clip_grad=dict(max_norm=0.01, norm_type=2),
    paramwise_cfg=dict(
        custom_keys={
            'query_embed': embed_multi,
            'query_feat': embed_multi,
            'level_embed': embed_multi,
        },
        norm_decay_mult=0.0))
param_scheduler = [
    dict(type='PolyLR', eta_min=0, power=0.9, begin=0, end=80000, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=80000, val_interval=8000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=16)
