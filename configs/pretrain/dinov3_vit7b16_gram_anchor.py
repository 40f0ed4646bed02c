# DINOv3 ViT-7B/16, stage 2 of 3: Gram anchoring (official dinov3_vit7b16_gram_anchor.yaml,
# docs/reference.md §4.2-§4.3). Starts from the stage-1 checkpoint (`load_from`); the Gram
# teacher is the stage-1 EMA teacher (`model.gram_ckpt`). 256 GPUs x 16 images.
# The official run counts iterations from the start of pretraining (1200 epochs in total,
# Gram from epoch 1000). MMEngine restarts the counter at 0 after `load_from`, so every
# official iteration below is shifted by `stage_start_iter` (= 1000 epochs x 1000).
_base_ = ['./dinov3_vit7b16_pretrain.py']

load_from = None  # the last checkpoint of the previous stage (StageCheckpointHook)
epoch_length = 1000
stage_start_iter = 1000 * epoch_length
total_iters = 1200 * epoch_length - stage_start_iter  # 200k stage iterations
lr = 3e-5
batch_size_per_gpu = 16

model = dict(
    gram_loss=dict(type='dino_mm.GramLoss', apply_norm=True, remove_neg=False,
                   remove_only_teacher_neg=False),
    gram_loss_weight=0.0,  # schedule below
    gram_img_level=True,
    gram_tokens_used='all',
    gram_ckpt=None)  # None: the previous stage's EMA teacher (StageCheckpointHook)

train_dataloader = dict(dataset=dict(pipeline=[
    dict(type='dino_mm.LoadImagePIL'),
    dict(type='dino_mm.DINOMultiCrop', global_crops_scale=(0.32, 1.0),
         local_crops_scale=(0.05, 0.32), local_crops_number=8, global_crops_size=256,
         local_crops_size=112, horizontal_flips=False, gram_teacher_crops_size=512,
         gram_teacher_no_distortions=True),
]))

# Official lr 0 -> 3e-5 (warm-up 100 ep) -> 3e-5 and teacher temp 0.04 -> 0.07 over 100 ep:
# both warm-ups lie before the stage start, so the stage sees the constant values (lr: peak
# and end both scaled by sqrt_wrt_1024, schedules v2: 3e-5 x 8 = 2.4e-4 on 256 GPUs x 16).
param_scheduler = [
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='lr', base_value=lr,
         final_value=lr, total_iters=total_iters, scaling_rule='sqrt_wrt_1024_v3',
         batch_size_per_gpu=batch_size_per_gpu, schedule_version='v2', by_epoch=False),
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='weight_decay', base_value=0.04,
         final_value=0.04, total_iters=total_iters, by_epoch=False),
]
custom_hooks = [
    dict(type='dino_mm.StageCheckpointHook', previous_stage='dinov3_vit7b16_pretrain'),
    dict(type='dino_mm.TeacherTempHook', warmup_teacher_temp=0.07, teacher_temp=0.07,
         warmup_iters=0),
    dict(type='dino_mm.TeacherMomentumHook', momentum_teacher=0.999,
         final_momentum_teacher=0.999),
    # gram.loss_weight_schedule: 0 until epoch 1000, then cosine to 2.0 over 1 epoch.
    dict(type='dino_mm.LossWeightScheduleHook', attr='gram_loss_weight', start=0.0, peak=0.0,
         end=2.0, warmup_iters=1000 * epoch_length - stage_start_iter,
         cosine_iters=1 * epoch_length),
    # reweight_dino_local_loss: 1.0 until epoch 1000, then cosine to 0.5 over 1 epoch
    # (as the official gram_anchor recipe).
    dict(type='dino_mm.LossWeightScheduleHook', attr='local_loss_weight', start=1.0, peak=1.0,
         end=0.5, warmup_iters=1000 * epoch_length - stage_start_iter,
         cosine_iters=1 * epoch_length),
    # Official: update_frequency 10000, it_first_update 1,010,000, max_updates 3.
    dict(type='dino_mm.GramTeacherRefreshHook', it_first_update=1_010_000 - stage_start_iter,
         update_frequency=10_000, max_updates=3),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=total_iters)
