# DINOv3 demo, stage 2 (Gram anchoring; official dinov3_vit7b16_gram_anchor.yaml in
# miniature): starts from the stage-1 checkpoint (`load_from`), whose EMA teacher also
# initialises the Gram teacher (`model.gram_ckpt`). Gram crops are the global crops at a
# higher resolution without photometric distortion; the Gram-teacher patch map is resized
# (bicubic) to the student grid. The Gram teacher is refreshed from the EMA teacher every
# `update_frequency` iterations (official 10k, from it 1.01M, 3 times), the Gram loss
# weight warms up with a cosine (official: 0 until 1000 ep, then cosine to 2.0 over 1 ep)
# and the local DINO loss weight decays 1 -> 0.5.
#   python tools/train.py configs/demo/dinov3_vit-tiny_digits_gram.py
_base_ = ['./dinov3_vit-tiny_digits.py']

load_from = None  # the last checkpoint of the previous stage (StageCheckpointHook)
max_iters = 200
gram_teacher_crops_size = 48

model = dict(
    gram_loss=dict(type='dino_mm.GramLoss', apply_norm=True, remove_neg=False,
                   remove_only_teacher_neg=False),
    gram_loss_weight=0.0,  # driven by the LossWeightScheduleHook below
    gram_img_level=True,
    gram_tokens_used='all',
    gram_ckpt=None)  # None: the previous stage's EMA teacher (StageCheckpointHook)

train_dataloader = dict(dataset=dict(pipeline=[
    dict(type='dino_mm.LoadImagePIL'),
    dict(type='dino_mm.DINOMultiCrop', global_crops_scale=(0.32, 1.0),
         local_crops_scale=(0.05, 0.32), local_crops_number={{_base_.local_crops_number}},
         global_crops_size={{_base_.global_crops_size}},
         local_crops_size={{_base_.local_crops_size}}, horizontal_flips=False,
         gram_teacher_crops_size=gram_teacher_crops_size, gram_teacher_no_distortions=True),
]))

param_scheduler = [
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='lr', base_value=6e-4,
         final_value=6e-4, total_iters=max_iters, warmup_iters=max_iters // 10,
         by_epoch=False),
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='weight_decay', base_value=0.04,
         final_value=0.04, total_iters=max_iters, by_epoch=False),
]
custom_hooks = [
    dict(type='dino_mm.StageCheckpointHook', previous_stage='dinov3_vit-tiny_digits'),
    dict(type='dino_mm.TeacherTempHook', warmup_teacher_temp=0.04, teacher_temp=0.07,
         warmup_iters=max_iters // 10),
    dict(type='dino_mm.TeacherMomentumHook', momentum_teacher=0.999,
         final_momentum_teacher=0.999),
    dict(type='dino_mm.LossWeightScheduleHook', attr='gram_loss_weight', start=0.0,
         peak=0.0, end=2.0, warmup_iters=max_iters // 20, cosine_iters=max_iters // 20),
    dict(type='dino_mm.LossWeightScheduleHook', attr='local_loss_weight', start=1.0,
         peak=1.0, end=0.5, warmup_iters=max_iters // 20, cosine_iters=max_iters // 20),
    dict(type='dino_mm.GramTeacherRefreshHook', it_first_update=max_iters // 4,
         update_frequency=max_iters // 4, max_updates=3),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=2, save_last=True))
