# Sharded pretraining (FSDP2) for the DINOv3 recipes: the DINOv2 FSDP set-up
# (dinov2_pretrain_fsdp.py: FlexibleRunner, dino_mm.DINOFSDPStrategy, SHARD_GRAD_OP, no DDP
# wrapper) with the official DINOv3 precision (docs/reference.md §4.1): bf16 parameters and
# compute, fp32 gradient reductions, fp32 sharded master weights. bf16 needs no loss
# scaling, so the recipe's plain OptimWrapper stays. The Gram teacher is sharded like the
# EMA teacher (its precision follows the teacher's entries), so a ViT-7B Gram teacher costs
# each rank 1/world of its weights.
_base_ = ['./dinov2_pretrain_fsdp.py']
_bf16_fp32 = dict(param_dtype='bf16', reduce_dtype='fp32')
strategy = dict(
    # official train.compile: every backbone block torch.compile-d before sharding
    compile_blocks=True,
    mixed_precision=dict(
        student=dict(backbone=_bf16_fp32, dino_head=_bf16_fp32, ibot_head=_bf16_fp32),
        teacher=dict(backbone=dict(param_dtype='bf16'), dino_head=dict(param_dtype='bf16'),
                     ibot_head=dict(param_dtype='bf16'))))
