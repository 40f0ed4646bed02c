# DINOv3 fast ImageNet-1k recipe (official dinov3/configs/train/vitl_im1k_lin834.yaml):
# ViT-L/16 without storage tokens, LayerNorm eps 1e-6, no k-bias mask, RoPE without train-time
# augmentation (bf16 tables), separate iBOT head, Sinkhorn-Knopp, global_ignore_diagonal.
# Hardware / results: 4 nodes x 8 H100-80GB (32 GPUs), 64 images/GPU (batch 2048),
# 100 epochs x 1250 iterations, ~14 h (0.57 s/iter) -> 82.0 % kNN / 83.5 % linear on
# ImageNet-1k (official README; the yaml header says 82.2 / 83.3).
# Launch: GPUS=32 GPUS_PER_NODE=8 bash tools/slurm_train.sh PARTITION dinov3_vitl16 \
#         configs/pretrain/dinov3_vitl16_im1k_lin834.py
# This leaf runs DDP (add --amp for bf16/fp16 autocast). The official precision (FSDP2, bf16
# params, fp32 reductions, compiled blocks) is configs/_base_/schedules/dinov3_pretrain_fsdp.py:
# add it to _base_ for a sharded run.
_base_ = [
    '../_base_/models/dinov3_ssl.py', '../_base_/datasets/imagenet_dinov2_pretrain.py',
    '../_base_/default_runtime.py'
]

epoch_length = 1250
epochs = 100
total_iters = epochs * epoch_length
batch_size_per_gpu = 64
lr = 0.001  # DINOv3 sqrt_wrt_1024: lr x 4 x sqrt(2048 / 1024) = 0.005657 on 32 GPUs

model = dict(
    backbone=dict(arch='dinov3_vitl16', drop_path_rate=0.3, layerscale_init=1e-5,
                  norm_layer='layernorm', num_register_tokens=0, mask_k_bias=False,
                  pos_embed_rope_base=100.0, pos_embed_rope_normalize_coords='separate',
                  pos_embed_rope_rescale_coords=None, pos_embed_rope_dtype='bf16'),
    koleo_loss_weight=0.1,
    centering='sinkhorn_knopp',
    global_ignore_diagonal=True)

train_dataloader = dict(
    batch_size=batch_size_per_gpu,
    dataset=dict(pipeline=[
        dict(type='dino_mm.LoadImagePIL'),
        dict(type='dino_mm.DINOMultiCrop', global_crops_scale=(0.32, 1.0),
             local_crops_scale=(0.05, 0.32), local_crops_number=8, global_crops_size=224,
             local_crops_size=96, horizontal_flips=True, official_blur_quirk=True),
    ]))

optim_wrapper = dict(
    type='OptimWrapper',
    constructor='dino_mm.LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=lr, betas=(0.9, 0.999), weight_decay=0.04),
    paramwise_cfg=dict(layer_decay_rate=0.9, patch_embed_lr_mult=0.2, variant='dinov3',
                       dino_head_wd_multiplier=1.0))
param_scheduler = [
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='lr', base_value=lr,
         final_value=1e-6, total_iters=total_iters, warmup_iters=10 * epoch_length,
         freeze_last_layer_iters=1 * epoch_length, scaling_rule='sqrt_wrt_1024_v3',
         batch_size_per_gpu=batch_size_per_gpu, by_epoch=False),
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='weight_decay', base_value=0.04,
         final_value=0.4, total_iters=total_iters, by_epoch=False),
]
custom_hooks = [
    dict(type='dino_mm.TeacherTempHook', warmup_teacher_temp=0.04, teacher_temp=0.07,
         warmup_iters=30 * epoch_length),
    dict(type='dino_mm.TeacherMomentumHook', momentum_teacher=0.992,
         final_momentum_teacher=1.0),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=total_iters)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    # official checkpointing.period 3750, max_to_keep 3
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=3750, max_keep_ckpts=3,
                    save_last=True))
log_processor = dict(by_epoch=False, window_size=10)
