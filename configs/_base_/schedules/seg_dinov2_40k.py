# DINOv2 linear / ms segmentation schedule: 40k iterations, 8 GPUs x 2 images,
# AdamW lr 1e-3 (0.9, 0.999), wd 1e-4, no gradient clipping, linear warmup over 1500 iters
# from 1e-6 x lr, then poly decay (power 1) to 0. Source: public copies of the hosted mmseg-0.x
# linear-head configs (e.g. dinov2_vitb14 ade20k / voc2012 linear, reproduced in
# Jiawei-Yang/Denoising-ViT evaluation/configs); the hosted files are not in the dinov2
# repository. Not checked: that the "ms" head configs use the same schedule.
_base_ = ['./seg_runtime.py']
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=40000)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=40000, val_interval=4000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=16)
