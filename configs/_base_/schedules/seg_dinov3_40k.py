# DINOv3 linear segmentation schedule (docs/reference.md §5.6): 40k iterations, 8 GPUs x 2 images,
# AdamW lr 1e-3 (0.9, 0.999), wd 1e-3, WarmupOneCycleLR = linear warmup over 1500
# iterations from 1e-6 x lr, then cosine annealing to 0 (final_div_factor inf), no
# gradient clipping, fp32.
_base_ = ['./seg_runtime.py']
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='CosineAnnealingLR', T_max=38500, eta_min=0.0, by_epoch=False,
         begin=1500, end=40000)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=40000, val_interval=4000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=16)
