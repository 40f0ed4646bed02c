# DINOv2 ViT-L/14 on ImageNet-22k (official train/vitl14.yaml): SwiGLU FFN, drop path 0.4,
# 131072 prototypes (bottleneck 384), separate iBOT head, Sinkhorn-Knopp centering,
# 32 images/GPU on 12 nodes x 8 A100-80GB (batch 3072), 500 epochs x 1250 iters,
# base lr 2e-4 (80 warm-up epochs), wd 0.04 -> 0.2, momentum 0.994, no layer decay.
# Expected (official README): 82.0 % kNN / 84.5 % linear on ImageNet-1k, ~3.3 days.
_base_ = [
    '../_base_/models/dinov2_ssl.py', '../_base_/datasets/imagenet_dinov2_pretrain.py',
    '../_base_/schedules/dinov2_pretrain.py', '../_base_/dinov2_pretrain_runtime.py'
]
epoch_length = 1250
epochs = 500
total_iters = epochs * epoch_length
batch_size_per_gpu = 32
patch_size = 14

model = dict(
    backbone=dict(arch='dinov2_vitl14', patch_size=14, ffn_layer='swiglufused',
                  drop_path_rate=0.4),
    dino_head=dict(out_dim=131072, bottleneck_dim=384),
    ibot_head=dict(_delete_=True, type='dino_mm.DINOHead', out_dim=131072, hidden_dim=2048,
                   bottleneck_dim=256, nlayers=3),
    centering='sinkhorn_knopp')
train_dataloader = dict(
    batch_size=batch_size_per_gpu,
    collate_fn=dict(patch_size=patch_size),
    dataset=dict(type='dino_mm.ImageNet22k', data_root='data/imagenet22k', _delete_=True,
                 pipeline=[
                     dict(type='dino_mm.LoadImagePIL'),
                     dict(type='dino_mm.DINOMultiCrop', global_crops_scale=(0.32, 1.0),
                          local_crops_scale=(0.05, 0.32), local_crops_number=8,
                          global_crops_size=224, local_crops_size=98,
                          official_blur_quirk=True)
                 ]))
optim_wrapper = dict(optimizer=dict(lr=2e-4), paramwise_cfg=dict(layer_decay_rate=1.0))
param_scheduler = [
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='lr', base_value=2e-4,
         final_value=1e-6, total_iters=total_iters, warmup_iters=80 * epoch_length,
         freeze_last_layer_iters=1 * epoch_length, scaling_rule='sqrt_wrt_1024',
         batch_size_per_gpu=batch_size_per_gpu, by_epoch=False),
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='weight_decay', base_value=0.04,
         final_value=0.2, total_iters=total_iters, by_epoch=False),
]
custom_hooks = [
    dict(type='dino_mm.TeacherTempHook', warmup_teacher_temp=0.04, teacher_temp=0.07,
         warmup_iters=30 * epoch_length),
    dict(type='dino_mm.TeacherMomentumHook', momentum_teacher=0.994,
         final_momentum_teacher=1.0),
]
train_cfg = dict(max_iters=total_iters)
