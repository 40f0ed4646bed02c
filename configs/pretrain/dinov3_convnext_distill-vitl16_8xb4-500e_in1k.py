# DINOv3 ConvNeXt multi-distillation (official, added Nov 2025):
# dinov3/configs/train/distillation_convnext/multi_distillation_convnext_test.yaml and the
# four student files convnext_{tiny,small,base,large}_p16.yaml beside it
# (docs/reference.md §4.6). One frozen ViT-L/16 teacher (the vitl_im1k_lin834 recipe; the
# last checkpoint of work_dirs/dinov3_vitl16_im1k_lin834, found by StageCheckpointHook, or
# the file in `teacher_ckpt`) trains four ConvNeXt students in one job, with one teacher
# forward per batch: ConvNeXt-T (official ranks 0-2), -S (2-4), -B (4-6), -L (6-8).
# Official: 8 GPUs, global batch 32 (4 images per GPU), 500 epochs x 1250 iterations on
# ImageNet-1k TRAIN; global crops 512, local crops 224 (8 of them). A ConvNeXt's tokens are
# 32 px apart, so the teacher sees the global crops downsampled by
# teacher_to_student_resolution_scale 2 (256 px: the same 16 x 16 grid for a ViT/16) and the
# iBOT masks are drawn for patches of 16 x 2 = 32 px. No result is published.
# Larger runs: the official file notes "4096 for 16 nodes" as the global batch, without the
# ranks ranges for it: keep every range size a divisor of global_batch_size, set
# batch_size_per_gpu = ceil(global / ranks) and scale lr_scale as below.
# Each student has its own official lr and weight-decay schedule (one scheduler per student,
# through paramwise_cfg.schedule_groups). Deviations from the official code:
# * The teacher crops are downsampled as the official option intends; the official
#   meta-architecture never applies it (docs/reference.md §4.6).
_base_ = ['./dinov3_vitl16_lvd1689m_distilled_multidist.py']

epoch_length = 1250  # official OFFICIAL_EPOCH_LENGTH default
epochs = 500
total_iters = epochs * epoch_length
batch_size_per_gpu = 4  # global 32 / 8 ranks
global_batch_size = 32

# Official per-student schedules.lr.peak / schedules.weight_decay.start.
student_lr_peak = dict(convnext_tiny=2e-4, convnext_small=2e-4, convnext_base=1e-4,
                       convnext_large=1e-4)
student_wd_start = dict(convnext_tiny=0.04, convnext_small=0.04, convnext_base=0.02,
                        convnext_large=0.04)


def _student(arch, ranks_range):
    return dict(
        ranks_range=ranks_range,
        # layer scale 1e-6 and drop path 0 are the official ConvNeXt defaults; patch_size
        # only resizes the maps of get_intermediate_layers, as official.
        backbone=dict(type='dino_mm.DinoConvNeXt', arch=arch, patch_size=16,
                      drop_path_rate=0.0, layer_scale_init_value=1e-6),
        dino_head=dict(type='dino_mm.DINOHead', out_dim=65536, hidden_dim=2048,
                       bottleneck_dim=256, nlayers=3),
        ibot_head=dict(type='dino_mm.DINOHead', out_dim=65536, hidden_dim=2048,
                       bottleneck_dim=256, nlayers=3),
        koleo_loss_weight=0.1,
        global_ignore_diagonal=True)


model = dict(
    teacher=dict(
        _delete_=True,
        backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vitl16',
                      img_size=224, layerscale_init=1e-5, norm_layer='layernorm',
                      num_register_tokens=0, mask_k_bias=False,
                      pos_embed_rope_rescale_coords=None, pos_embed_rope_dtype='bf16'),
        dino_head=dict(out_dim=65536, hidden_dim=2048, bottleneck_dim=256, nlayers=3),
        ibot_head=dict(out_dim=65536, hidden_dim=2048, bottleneck_dim=256, nlayers=3)),
    students=dict(
        _delete_=True,
        convnext_tiny=_student('tiny', [0, 2]),
        convnext_small=_student('small', [2, 4]),
        convnext_base=_student('base', [4, 6]),
        convnext_large=_student('large', [6, 8])),
    global_batch_size=global_batch_size,
    teacher_to_student_resolution_scale=2.0)

data_root = 'data/imagenet'
train_dataloader = dict(
    batch_size=batch_size_per_gpu,
    collate_fn=dict(patch_size=32),  # student patch 16 x resolution scale 2
    dataset=dict(_delete_=True, type='dino_mm.ImageNet', data_root=data_root, split='TRAIN',
                 pipeline=[
                     dict(type='dino_mm.LoadImagePIL'),
                     dict(type='dino_mm.DINOMultiCrop', global_crops_scale=(0.32, 1.0),
                          local_crops_scale=(0.05, 0.32), local_crops_number=8,
                          global_crops_size=512, local_crops_size=224,
                          horizontal_flips=True),
                 ]))

# lr: linear_warmup_cosine_decay(1e-6 -> peak -> 1e-6), warm-up 80 epochs, last layer frozen
# for 1 epoch; sqrt_wrt_1024 (v3) scales the peak and the end (not the start) for the global
# batch: x 4 x sqrt(32 / 1024) = 0.707. Weight decay: a linear ramp to 0.2 over the run.
lr_scale = 4 * (global_batch_size / 1024)**0.5
optim_wrapper = dict(
    optimizer=dict(lr=1e-4 * lr_scale, betas=(0.9, 0.999), weight_decay=0.04),
    paramwise_cfg=dict(_delete_=True, layer_decay_rate=1.0, patch_embed_lr_mult=0.2,
                       variant='dinov3', dino_head_wd_multiplier=1.0,
                       # one optimizer group set per student, each with its own schedules
                       schedule_groups={name: f'students.{name}.'
                                        for name in student_lr_peak}))
param_scheduler = [
    dict(type='dino_mm.DINOCosineParamScheduler', param_group=name, param_name='lr',
         start_warmup_value=1e-6, base_value=student_lr_peak[name] * lr_scale,
         final_value=1e-6 * lr_scale, total_iters=total_iters,
         warmup_iters=80 * epoch_length, freeze_last_layer_iters=1 * epoch_length,
         schedule_version='v2', by_epoch=False) for name in student_lr_peak
] + [
    dict(type='dino_mm.DINOCosineParamScheduler', param_group=name,
         param_name='weight_decay', start_warmup_value=student_wd_start[name],
         base_value=0.2, final_value=0.2, total_iters=total_iters,
         warmup_iters=total_iters, schedule_version='v2', by_epoch=False)
    for name in student_wd_start
]
custom_hooks = [
    dict(type='dino_mm.StageCheckpointHook', previous_stage='dinov3_vitl16_im1k_lin834',
         load_previous_as='teacher_ckpt'),
    dict(type='dino_mm.TeacherTempHook', warmup_teacher_temp=0.04, teacher_temp=0.07,
         warmup_iters=120 * epoch_length),
    # Updates every student's EMA (the teacher is frozen).
    # official schedules.momentum: 0.994 -> 1.0, warm-up over the whole run (a linear ramp)
    dict(type='dino_mm.TeacherMomentumHook', momentum_teacher=0.994,
         final_momentum_teacher=1.0, schedule_version='v2'),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=total_iters)
