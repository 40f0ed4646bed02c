# DINOv2-style distillation with the DINOv3 losses (official `distillation.enabled`,
# docs/reference.md §4.5): a frozen ViT-L/16 teacher (the vitl_im1k_lin834 recipe; its
# run's last checkpoint, found in work_dirs/dinov3_vitl16_im1k_lin834 by StageCheckpointHook,
# or the file in `teacher_ckpt`) distilled into a ViT-S/16 student on
# ImageNet-1k. The student's global crops are not masked; an EMA of the student
# (`student_ema`) is what gets evaluated.
# Hardware as the teacher recipe (4 x 8 GPUs, 64 images/GPU); no published figure for this
# exact pairing (the released DINOv2 ViT-S/14 distilled: 79.0 kNN / 81.1 linear,
# docs/reference.md §5.11).
_base_ = ['./dinov3_vitl16_im1k_lin834.py']

_teacher_backbone = dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vitl16',
                         img_size=224, layerscale_init=1e-5, norm_layer='layernorm',
                         num_register_tokens=0, mask_k_bias=False,
                         pos_embed_rope_rescale_coords=None, pos_embed_rope_dtype='bf16')
model = dict(
    _delete_=True,
    type='dino_mm.DINOv3Distillation',
    teacher=dict(
        backbone=_teacher_backbone,
        dino_head=dict(out_dim=65536, hidden_dim=2048, bottleneck_dim=256, nlayers=3),
        ibot_head=dict(out_dim=65536, hidden_dim=2048, bottleneck_dim=256, nlayers=3)),
    teacher_ckpt=None,  # None: the previous stage's last checkpoint (StageCheckpointHook)
    backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vits16', img_size=224,
                  drop_path_rate=0.0, layerscale_init=1e-5, norm_layer='layernorm',
                  num_register_tokens=0, mask_k_bias=False,
                  pos_embed_rope_rescale_coords=None, pos_embed_rope_dtype='bf16'),
    dino_head=dict(type='dino_mm.DINOHead', out_dim=65536, hidden_dim=2048,
                   bottleneck_dim=256, nlayers=3),
    ibot_head=dict(type='dino_mm.DINOHead', out_dim=65536, hidden_dim=2048,
                   bottleneck_dim=256, nlayers=3),
    centering='sinkhorn_knopp',
    global_ignore_diagonal=True,
    koleo_loss_weight=0.1,
    clip_grad=3.0)
custom_hooks = [
    dict(type='dino_mm.StageCheckpointHook', previous_stage='dinov3_vitl16_im1k_lin834',
         load_previous_as='teacher_ckpt'),
    dict(type='dino_mm.TeacherTempHook', warmup_teacher_temp=0.04, teacher_temp=0.07,
         warmup_iters=37500),  # as the teacher recipe: 30 epochs of 1250 iterations
    dict(type='dino_mm.TeacherMomentumHook', momentum_teacher=0.992,
         final_momentum_teacher=1.0),
]
