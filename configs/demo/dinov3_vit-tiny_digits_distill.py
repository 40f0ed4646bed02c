# DINOv3 demo, stage 4 (distillation; official `distillation.enabled` in miniature): the
# stage-3 model's EMA teacher, frozen, is distilled into a narrower student (embed 32) with
# the stage-1 data, crops and schedules. The student's global crops are not masked, and an
# EMA of the student (`student_ema`) is what gets evaluated.
#   python tools/train.py configs/demo/dinov3_vit-tiny_digits_distill.py
# The teacher is the last checkpoint of work_dirs/dinov3_vit-tiny_digits_hr, found by
# StageCheckpointHook; set model.teacher_ckpt to use another file.
_base_ = ['./dinov3_vit-tiny_digits.py']

model = dict(
    type='dino_mm.DINOv3Distillation',
    teacher=dict(backbone={{_base_.model.backbone}}, dino_head={{_base_.model.dino_head}},
                 ibot_head={{_base_.model.ibot_head}}),
    teacher_ckpt=None,  # None: the previous stage's checkpoint (StageCheckpointHook)
    backbone=dict(embed_dim=32, num_heads=2))

custom_hooks = [
    dict(type='dino_mm.StageCheckpointHook', previous_stage='dinov3_vit-tiny_digits_hr',
         load_previous_as='teacher_ckpt'),
    dict(type='dino_mm.TeacherTempHook', warmup_teacher_temp=0.04, teacher_temp=0.07,
         warmup_iters=100),  # as stage 1: max_iters // 3
    dict(type='dino_mm.TeacherMomentumHook', momentum_teacher=0.992,
         final_momentum_teacher=1.0),
]
