# DINOv3 multi-distillation of the released small models (official
# dinov3_vitl16_lvd1689m_distilled.yaml + --multi-distillation, docs/reference.md §4.6): one
# frozen ViT-7B/16 teacher (the last checkpoint of work_dirs/dinov3_vit7b16_high_res_adapt,
# found by StageCheckpointHook, or the file in `teacher_ckpt`), four students trained in one
# job with one teacher forward per batch: ViT-S/16 (official ranks 0-48), ViT-S+/16 SwiGLU
# (48-96), ViT-B/16 (96-176), ViT-L/16 (176-296). Official: 296 GPUs, global batch 1920, 20 epochs x 1000
# iterations; released results: docs/reference.md §5.11 (e.g. ViT-L/16 ADE20k 54.9 mIoU,
# NYU 0.352).
# As in the official job, each student trains on its own ranks (`ranks_range`) and sees the
# whole global batch of 1920 images per step (see dino_mm.MultiDistillation): launch 296
# ranks, each loading ceil(1920 / 296) = 7 images. Fewer GPUs: change the ranges so they tile
# the ranks (every range size must divide global_batch_size), or remove every ranks_range to
# run all students on every rank.
_base_ = ['./dinov3_vit7b16_pretrain.py']

epoch_length = 1000
total_iters = 20 * epoch_length
batch_size_per_gpu = 7  # ceil(global_batch_size / 296 ranks)
global_batch_size = 1920


def _student(arch, ranks_range, **kw):
    return dict(
        ranks_range=ranks_range,
        backbone=dict(type='dino_mm.DinoVisionTransformer', arch=arch, img_size=256,
                      drop_path_rate=0.0, layerscale_init=1e-5,
                      pos_embed_rope_rescale_coords=2.0, pos_embed_rope_dtype='bf16', **kw),
        dino_head=dict(type='dino_mm.DINOHead', out_dim=262144, hidden_dim=8192,
                       bottleneck_dim=512, nlayers=3),
        ibot_head=dict(type='dino_mm.DINOHead', out_dim=98304, hidden_dim=4096,
                       bottleneck_dim=384, nlayers=3),
        koleo_loss_weight=0.1,
        global_ignore_diagonal=True)


model = dict(
    _delete_=True,
    type='dino_mm.MultiDistillation',
    teacher=dict(
        backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vit7b16',
                      img_size=256, layerscale_init=1e-5, pos_embed_rope_dtype='fp32',
                      untie_global_and_local_cls_norm=True),
        dino_head=dict(out_dim=262144, hidden_dim=8192, bottleneck_dim=512, nlayers=3),
        ibot_head=dict(out_dim=98304, hidden_dim=4096, bottleneck_dim=384, nlayers=3)),
    teacher_ckpt=None,  # None: the stage-3 run's last checkpoint (StageCheckpointHook)
    students=dict(
        vits_mlp4_4=_student('dinov3_vits16', [0, 48]),
        vitsp_swiglu6_1=_student('dinov3_vits16plus', [48, 96]),
        vitb_mlp4_3=_student('dinov3_vitb16', [96, 176]),
        vitl_mlp4_1=_student('dinov3_vitl16', [176, 296])),
    global_batch_size=global_batch_size,
    centering='sinkhorn_knopp',
    clip_grad=3.0)

train_dataloader = dict(batch_size=batch_size_per_gpu)
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=5e-5, betas=(0.9, 0.99), weight_decay=0.04),
    paramwise_cfg=dict(layer_decay_rate=0.99, patch_embed_lr_mult=0.2, variant='dinov3'))
# lr: linear_warmup_cosine_decay(0 -> 0 -> 5e-5, cosine over 10 ep) then constant, scaled by
# sqrt_wrt_1024 (v3) for the official global batch 1920: x 4 x sqrt(1920 / 1024).
lr_scale = 4 * (1920 / 1024)**0.5
param_scheduler = [
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='lr', base_value=0.0,
         final_value=5e-5 * lr_scale, total_iters=10 * epoch_length, by_epoch=False),
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='weight_decay', base_value=0.04,
         final_value=0.04, total_iters=total_iters, by_epoch=False),
]
custom_hooks = [
    dict(type='dino_mm.StageCheckpointHook', previous_stage='dinov3_vit7b16_high_res_adapt',
         load_previous_as='teacher_ckpt'),
    dict(type='dino_mm.TeacherTempHook', warmup_teacher_temp=0.04, teacher_temp=0.07,
         warmup_iters=0),
    # Updates every student's EMA (the teacher is frozen).
    dict(type='dino_mm.TeacherMomentumHook', momentum_teacher=0.994,
         final_momentum_teacher=1.0),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=total_iters)
