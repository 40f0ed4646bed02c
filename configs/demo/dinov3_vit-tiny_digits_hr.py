# DINOv3 demo, stage 3 (high-resolution adaptation; official
# dinov3_vit7b16_high_res_adapt.yaml in miniature): student and EMA teacher start from the
# stage-2 *teacher* (official `student.resume_from_teacher_chkpt`), the Gram teacher too.
# Every batch draws one (global, local, gram) crop-size triple with the official pair
# ratios [0.3, 0.3, 0.3, 0.05, 0.05]; Gram weight 1.5 constant without refresh, local DINO
# weight 0.5, teacher temperature 0.07, momentum 0.999, lr 0 -> cosine to its final value.
#   python tools/train.py configs/demo/dinov3_vit-tiny_digits_hr.py
_base_ = ['./dinov3_vit-tiny_digits.py']

load_from = None  # the last checkpoint of the previous stage (StageCheckpointHook)
max_iters = 60

model = dict(
    gram_loss=dict(type='dino_mm.GramLoss', apply_norm=True, remove_neg=False,
                   remove_only_teacher_neg=False),
    gram_loss_weight=1.5,
    local_loss_weight=0.5,
    gram_ckpt=None)  # None: the previous stage's EMA teacher (StageCheckpointHook)

# Official global [512, 768, 768, 768, 768], local [112, 112, 168, 224, 336], gram
# [768, 1152, 1152, 1152, 1152] for 256/112 training crops, scaled to the 32/16 demo.
train_dataloader = dict(
    batch_sampler=dict(type='dino_mm.MultiResolutionBatchSampler',
                       ratios=[0.3, 0.3, 0.3, 0.05, 0.05]),
    dataset=dict(
        _delete_=True,
        type='dino_mm.MultiResolutionDataset',
        dataset=dict(type='dino_mm.ImageNet', data_root={{_base_.data_root}}, split='TRAIN',
                     pipeline=[dict(type='dino_mm.LoadImagePIL')]),
        multi_crop=dict(global_crops_scale=(0.32, 1.0), local_crops_scale=(0.05, 0.32),
                        local_crops_number={{_base_.local_crops_number}},
                        horizontal_flips=False, gram_teacher_no_distortions=True),
        global_crops_sizes=[64, 96, 96, 96, 96],
        local_crops_sizes=[16, 16, 24, 32, 48],
        gram_teacher_crops_sizes=[96, 144, 144, 144, 144]))

param_scheduler = [
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='lr', base_value=0.0,
         final_value=2.5e-4, total_iters=max_iters // 3, by_epoch=False),
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='weight_decay', base_value=0.04,
         final_value=0.04, total_iters=max_iters, by_epoch=False),
]
custom_hooks = [
    dict(type='dino_mm.StageCheckpointHook', previous_stage='dinov3_vit-tiny_digits_gram',
         student_from_teacher=True),
    dict(type='dino_mm.TeacherTempHook', warmup_teacher_temp=0.07, teacher_temp=0.07,
         warmup_iters=0),
    dict(type='dino_mm.TeacherMomentumHook', momentum_teacher=0.999,
         final_momentum_teacher=0.999),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=2, save_last=True))
