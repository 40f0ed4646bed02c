# Sharded pretraining (FSDP2) for the DINOv2 recipes: MMEngine's FlexibleRunner with
# dino_mm.DINOFSDPStrategy. Student and teacher are sharded per transformer block with
# identical wrapping, so the teacher EMA runs on local shards; checkpoints are DCP folders
# (iter_N.pth/) written by every rank and resumable on any world size.
# Precision is the official DINOv2 FSDP setup (docs/reference.md §3.10): fp16 parameters and
# compute, gradient reductions in fp16 for the backbone and fp32 for the student heads, fp32
# buffers (loss centers) and fp32 sharded master weights, with a sharded gradient scaler
# (dino_mm.FP16OptimWrapper: a step whose gradients overflow on any rank is skipped on all;
# the leaf configs set it, as optim_wrapper lives in the recipe base).
# bf16 without loss scaling instead: strategy.mixed_precision='bf16' and
# optim_wrapper.type='OptimWrapper'.
runner_type = 'FlexibleRunner'
strategy = dict(
    type='dino_mm.DINOFSDPStrategy',
    mixed_precision=dict(
        student=dict(backbone=dict(param_dtype='fp16', reduce_dtype='fp16'),
                     dino_head=dict(param_dtype='fp16', reduce_dtype='fp32'),
                     ibot_head=dict(param_dtype='fp16', reduce_dtype='fp32')),
        teacher=dict(backbone=dict(param_dtype='fp16'), dino_head=dict(param_dtype='fp16'),
                     ibot_head=dict(param_dtype='fp16'))),
    # official SHARD_GRAD_OP: keep gathered student weights between forward and backward
    reshard_after_forward=False,
    # recompute student blocks in backward (trades ~30 % speed for activation memory; see docs/memory.md)
    activation_checkpointing=False,
    dist_timeout=1800)
# The strategy shards the model itself: no DDP wrapper.
model_wrapper_cfg = None
