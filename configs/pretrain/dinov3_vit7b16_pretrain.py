# DINOv3 ViT-7B/16, stage 1 of 3: pretraining (official dinov3_vit7b16_pretrain.yaml,
# docs/reference.md §4.3). 32 nodes x 8 GPUs (256 GPUs), 16 images/GPU (batch 4096), 1000
# epochs x 1000 iterations on LVD-1689M (use any dino_mm dataset; ImageNet-22k shown). Time
# not published.
# Stage 2: dinov3_vit7b16_gram_anchor.py, stage 3: dinov3_vit7b16_high_res_adapt.py.
# A 7B student + teacher does not fit one GPU without sharding: launch
# dinov3_vit7b16_pretrain_fsdp.py (FSDP2, bf16, compiled blocks and fp8 block matmuls as the
# official train.compile / fp8_enabled) on a cluster.
_base_ = [
    '../_base_/models/dinov3_ssl.py', '../_base_/datasets/imagenet_dinov2_pretrain.py',
    '../_base_/default_runtime.py'
]

epoch_length = 1000
epochs = 1000
total_iters = epochs * epoch_length
batch_size_per_gpu = 16
lr = 5e-5  # sqrt_wrt_1024 (v3): 5e-5 x 4 x sqrt(4096 / 1024) = 4e-4 on 256 GPUs

model = dict(
    backbone=dict(arch='dinov3_vit7b16', drop_path_rate=0.4, layerscale_init=1e-5,
                  pos_embed_rope_rescale_coords=2.0, pos_embed_rope_dtype='fp32',
                  untie_global_and_local_cls_norm=True, img_size=256),
    dino_head=dict(out_dim=262144, hidden_dim=8192, bottleneck_dim=512, nlayers=3),
    ibot_head=dict(out_dim=98304, hidden_dim=4096, bottleneck_dim=384, nlayers=3),
    clip_grad=30.0)

data_root = 'data/imagenet-22k'
train_dataloader = dict(
    batch_size=batch_size_per_gpu,
    dataset=dict(type='dino_mm.ImageNet22k', data_root=data_root, _delete_=True, pipeline=[
        dict(type='dino_mm.LoadImagePIL'),
        dict(type='dino_mm.DINOMultiCrop', global_crops_scale=(0.32, 1.0),
             local_crops_scale=(0.05, 0.32), local_crops_number=8, global_crops_size=256,
             local_crops_size=112, horizontal_flips=False),
    ]))

optim_wrapper = dict(
    type='OptimWrapper',
    constructor='dino_mm.LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=lr, betas=(0.9, 0.99), weight_decay=0.04),
    paramwise_cfg=dict(layer_decay_rate=0.98, patch_embed_lr_mult=0.2, variant='dinov3'))
# Official `schedules:` block, linear_warmup_cosine_decay(0 -> 5e-5 -> 5e-5, warm-up 100 ep):
# a linear warm-up then constant. schedule_version='v2' follows that function (warm-up end
# point excluded) and scales both the peak and the end with sqrt_wrt_1024, as the official
# build_schedulers_v2 does (4 x sqrt(4096 / 1024) = 8 on 256 GPUs x 16: 4e-4 throughout).
param_scheduler = [
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='lr', base_value=lr,
         final_value=lr, total_iters=total_iters, warmup_iters=100 * epoch_length,
         freeze_last_layer_iters=5 * epoch_length, scaling_rule='sqrt_wrt_1024_v3',
         batch_size_per_gpu=batch_size_per_gpu, schedule_version='v2', by_epoch=False),
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='weight_decay', base_value=0.04,
         final_value=0.04, total_iters=total_iters, by_epoch=False),
]
custom_hooks = [
    dict(type='dino_mm.TeacherTempHook', warmup_teacher_temp=0.04, teacher_temp=0.07,
         warmup_iters=100 * epoch_length),
    dict(type='dino_mm.TeacherMomentumHook', momentum_teacher=0.994,
         final_momentum_teacher=0.994),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=total_iters)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    # official checkpointing.period 3750, max_to_keep 3
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=3750, max_keep_ckpts=3,
                    save_last=True))
log_processor = dict(by_epoch=False, window_size=10)
