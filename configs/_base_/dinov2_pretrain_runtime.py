# Runtime of the DINOv2 pretraining recipes: dino_mm's default runtime plus the teacher
# schedules (hooks, not optimizer parameters) and the official checkpoint period
# (iterations of OFFICIAL_EPOCH_LENGTH = 1250).
_base_ = ['./default_runtime.py']
custom_hooks = [
    dict(type='dino_mm.TeacherTempHook', warmup_teacher_temp=0.04, teacher_temp=0.07,
         warmup_iters=30 * 1250),
    dict(type='dino_mm.TeacherMomentumHook', momentum_teacher=0.992,
         final_momentum_teacher=1.0),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    # official: every 3 epochs, keep 3
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=3 * 1250,
                    max_keep_ckpts=3, save_last=True))
log_processor = dict(by_epoch=False, window_size=10)
