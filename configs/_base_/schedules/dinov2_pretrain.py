# Official DINOv2 optimisation (docs/reference.md §3.8-§3.9), in iterations of
# OFFICIAL_EPOCH_LENGTH = 1250: AdamW(0.9, 0.999); lr = base_lr * sqrt(total_batch / 1024),
# linear warm-up (10 ep) then cosine to min_lr; weight decay cosine 0.04 -> 0.4; last layer
# frozen 1 epoch; layer-wise lr decay 0.9, patch-embed lr x0.2; grad clipping 3.0 per student
# sub-module (in the model); teacher momentum cosine 0.992 -> 1; teacher temperature
# 0.04 -> 0.07 over 30 ep.
epoch_length = 1250
epochs = 100
total_iters = epochs * epoch_length
base_lr = 0.004
min_lr = 1e-6
warmup_epochs = 10
batch_size_per_gpu = 64

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=base_lr, betas=(0.9, 0.999), weight_decay=0.04),
    constructor='dino_mm.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9, patch_embed_lr_mult=0.2, variant='dinov2'))
param_scheduler = [
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='lr', base_value=base_lr,
         final_value=min_lr, total_iters=total_iters,
         warmup_iters=warmup_epochs * epoch_length,
         freeze_last_layer_iters=1 * epoch_length, scaling_rule='sqrt_wrt_1024',
         batch_size_per_gpu=batch_size_per_gpu, by_epoch=False),
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='weight_decay', base_value=0.04,
         final_value=0.4, total_iters=total_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=total_iters)
