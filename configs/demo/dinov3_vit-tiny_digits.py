# DINOv3 demo, stage 1 (pretraining): a tiny DINOv3 ViT (RoPE with train-time coordinate
# rescale, 4 storage tokens, untied local class-token norm) trained with the DINOv3 loss set
# (Sinkhorn-Knopp, separate iBOT head, plain-linear DINO prototypes, global_ignore_diagonal,
# KoLeo) on the embedded digits data in ImageNet layout. A few minutes on CPU.
#   python tools/dataset_converters/make_digits_dataset.py --out data/digits
#   python tools/dataset_converters/make_imagenet_extra.py --root data/digits \
#       --extra data/digits/extra --splits TRAIN VAL
#   python tools/train.py configs/demo/dinov3_vit-tiny_digits.py
# Then stage 2 (Gram anchoring, dinov3_vit-tiny_digits_gram.py), stage 3 (high-resolution
# adaptation, dinov3_vit-tiny_digits_hr.py) and stage 4 (distillation into a smaller student,
# dinov3_vit-tiny_digits_distill.py), each starting from the previous checkpoint.
_base_ = ['../_base_/default_runtime.py']

data_root = 'data/digits'
patch_size = 8
global_crops_size = 32
local_crops_size = 16
local_crops_number = 4
embed_dim = 64
max_iters = 300
batch_size = 32

model = dict(
    type='dino_mm.DINOv3',
    backbone=dict(
        type='dino_mm.DinoVisionTransformer', arch='dinov3_vits16', patch_size=patch_size,
        img_size=global_crops_size, embed_dim=embed_dim, depth=2, num_heads=4,
        drop_path_rate=0.1, layerscale_init=1e-5, untie_global_and_local_cls_norm=True,
        pos_embed_rope_rescale_coords=2.0),
    dino_head=dict(type='dino_mm.DINOHead', out_dim=512, hidden_dim=256, bottleneck_dim=64,
                   nlayers=3, weight_norm_last_layer=False),
    ibot_head=dict(type='dino_mm.DINOHead', out_dim=512, hidden_dim=256, bottleneck_dim=64,
                   nlayers=3, weight_norm_last_layer=False),
    centering='sinkhorn_knopp',
    global_ignore_diagonal=True,
    koleo_loss_weight=0.1,
    clip_grad=3.0)

multi_crop = dict(
    type='dino_mm.DINOMultiCrop', global_crops_scale=(0.32, 1.0),
    local_crops_scale=(0.05, 0.32), local_crops_number=local_crops_number,
    global_crops_size=global_crops_size, local_crops_size=local_crops_size,
    horizontal_flips=False)
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='dino_mm.SeededInfiniteSampler', shuffle=True),
    collate_fn=dict(type='dino_mm.dino_collate', mask_ratio_min_max=(0.1, 0.5),
                    mask_probability=0.5, patch_size=patch_size),
    dataset=dict(type='dino_mm.ImageNet', data_root=data_root, split='TRAIN',
                 pipeline=[dict(type='dino_mm.LoadImagePIL'), multi_crop]))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.04),
    constructor='dino_mm.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9, patch_embed_lr_mult=0.2, variant='dinov3'))
param_scheduler = [
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='lr', base_value=1e-3,
         final_value=1e-5, total_iters=max_iters, warmup_iters=max_iters // 10,
         freeze_last_layer_iters=max_iters // 30, by_epoch=False),
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='weight_decay', base_value=0.04,
         final_value=0.4, total_iters=max_iters, by_epoch=False),
]
custom_hooks = [
    dict(type='dino_mm.TeacherTempHook', warmup_teacher_temp=0.04, teacher_temp=0.07,
         warmup_iters=max_iters // 3),
    dict(type='dino_mm.TeacherMomentumHook', momentum_teacher=0.992,
         final_momentum_teacher=1.0),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=2, save_last=True))
