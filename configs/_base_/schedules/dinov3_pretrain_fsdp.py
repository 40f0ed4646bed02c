# Sharded pretraining (FSDP2) for the DINOv3 recipes: MMEngine's FlexibleRunner with
# dino_mm.DINOFSDPStrategy, as configs/_base_/schedules/dinov2_pretrain_fsdp.py, with the
# official DINOv3 precision (docs/reference.md §4.1): bf16 parameters and compute, fp32
# gradient reductions, fp32 sharded master weights, SHARD_GRAD_OP for the student. bf16
# needs no loss scaling, so the recipe's plain OptimWrapper stays. The Gram teacher is
# sharded like the EMA teacher (its precision follows the teacher's entries), so a ViT-7B
# Gram teacher costs each rank 1/world of its weights.
runner_type = 'FlexibleRunner'
strategy = dict(
    type='dino_mm.DINOFSDPStrategy',
    mixed_precision=dict(
        student=dict(backbone=dict(param_dtype='bf16', reduce_dtype='fp32'),
                     dino_head=dict(param_dtype='bf16', reduce_dtype='fp32'),
                     ibot_head=dict(param_dtype='bf16', reduce_dtype='fp32')),
        teacher=dict(backbone=dict(param_dtype='bf16'), dino_head=dict(param_dtype='bf16'),
                     ibot_head=dict(param_dtype='bf16'))),
    reshard_after_forward=False,
    activation_checkpointing=False,
    dist_timeout=1800)
model_wrapper_cfg = None
