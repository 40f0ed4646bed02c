# DINOv3 ViT-7B/16, stage 3 of 3: high-resolution adaptation (official
# dinov3_vit7b16_high_res_adapt.yaml, docs/reference.md §4.3). Student, EMA teacher and
# Gram teacher start from the stage-2 EMA teacher (official `student.resume_from_teacher_chkpt` and
# `gram.ckpt`). 30 epochs x 1000 iterations, 8 images/GPU on 256 GPUs. Each batch uses one
# (global, local, gram) crop-size triple drawn with the official pair ratios.
# KoLeo is the distributed variant (official `koleo_loss_distributed: true`): nearest
# neighbours are searched in groups of 16 consecutive rows of the batch gathered from all
# ranks (2 ranks x 8 images), gradients flowing through the gathered rows.
_base_ = ['./dinov3_vit7b16_pretrain.py']

load_from = None  # the last checkpoint of the previous stage (StageCheckpointHook)
epoch_length = 1000
total_iters = 30 * epoch_length
batch_size_per_gpu = 8

model = dict(
    gram_loss=dict(type='dino_mm.GramLoss', apply_norm=True, remove_neg=False,
                   remove_only_teacher_neg=False),
    gram_loss_weight=1.5,
    local_loss_weight=0.5,
    koleo_loss_distributed=True,
    koleo_topk=1,
    koleo_distributed_loss_group_size=16,
    gram_ckpt=None)  # None: the previous stage's EMA teacher (StageCheckpointHook)

train_dataloader = dict(
    batch_size=batch_size_per_gpu,
    batch_sampler=dict(type='dino_mm.MultiResolutionBatchSampler',
                       ratios=[0.3, 0.3, 0.3, 0.05, 0.05]),
    drop_last=False,  # the batch sampler drops incomplete batches itself
    dataset=dict(
        _delete_=True,
        type='dino_mm.MultiResolutionDataset',
        dataset=dict(type='dino_mm.ImageNet22k', data_root={{_base_.data_root}},
                     pipeline=[dict(type='dino_mm.LoadImagePIL')]),
        multi_crop=dict(global_crops_scale=(0.32, 1.0), local_crops_scale=(0.05, 0.32),
                        local_crops_number=8, horizontal_flips=False,
                        gram_teacher_no_distortions=True),
        global_crops_sizes=[512, 768, 768, 768, 768],
        local_crops_sizes=[112, 112, 168, 224, 336],
        gram_teacher_crops_sizes=[768, 1152, 1152, 1152, 1152]))

# lr: linear_warmup_cosine_decay(0 -> 0 -> 1.25e-5, no warm-up, cosine over 10 ep), then
# constant; weight decay 0.04; teacher temperature 0.07; momentum 0.999. Peak and end are
# scaled by sqrt_wrt_1024 (v3) for the run's world size and batch (schedules v2): on 256
# GPUs x 8 images 4 x sqrt(2048 / 1024), i.e. 7.07e-5 at the end.
param_scheduler = [
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='lr', base_value=0.0,
         final_value=1.25e-5, total_iters=10 * epoch_length, scaling_rule='sqrt_wrt_1024_v3',
         batch_size_per_gpu=batch_size_per_gpu, schedule_version='v2', by_epoch=False),
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='weight_decay', base_value=0.04,
         final_value=0.04, total_iters=total_iters, by_epoch=False),
]
custom_hooks = [
    dict(type='dino_mm.StageCheckpointHook', previous_stage='dinov3_vit7b16_gram_anchor',
         student_from_teacher=True),
    dict(type='dino_mm.TeacherTempHook', warmup_teacher_temp=0.07, teacher_temp=0.07,
         warmup_iters=0),
    dict(type='dino_mm.TeacherMomentumHook', momentum_teacher=0.999,
         final_momentum_teacher=0.999),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=total_iters)
