# Sharded pretraining (FSDP2) for the DINOv2 recipes: MMEngine's FlexibleRunner with
# dino_mm.DINOFSDPStrategy. Student and teacher are sharded per transformer block with
# identical wrapping, so the teacher EMA runs on local shards; checkpoints are DCP folders
# (iter_N.pth/) written by every rank and resumable on any world size.
# Precision follows the official FSDP setup (docs/reference.md §3.10) with bf16 instead of
# fp16: half-precision parameters and compute, gradient reductions in bf16 for the backbone
# and fp32 for the student heads, fp32 buffers (loss centers) and fp32 sharded master weights.
runner_type = 'FlexibleRunner'
strategy = dict(
    type='dino_mm.DINOFSDPStrategy',
    mixed_precision=dict(
        student=dict(backbone=dict(param_dtype='bf16', reduce_dtype='bf16'),
                     dino_head=dict(param_dtype='bf16', reduce_dtype='fp32'),
                     ibot_head=dict(param_dtype='bf16', reduce_dtype='fp32')),
        teacher=dict(backbone=dict(param_dtype='bf16'), dino_head=dict(param_dtype='bf16'),
                     ibot_head=dict(param_dtype='bf16'))),
    # official SHARD_GRAD_OP: keep gathered student weights between forward and backward
    reshard_after_forward=False,
    # recompute student blocks in backward (trades ~30 % speed for activation memory; see docs/memory.md)
    activation_checkpointing=False,
    dist_timeout=1800)
# The strategy shards the model itself: no DDP wrapper.
model_wrapper_cfg = None
