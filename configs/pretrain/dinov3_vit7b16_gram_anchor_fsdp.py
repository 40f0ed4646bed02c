# dinov3_vit7b16_gram_anchor (stage 2) sharded with FSDP2, as dinov3_vit7b16_pretrain_fsdp.py
# (official bf16 / fp32 reductions, compiled blocks, fp8 block matmuls, activation
# checkpointing); the Gram teacher is sharded like the EMA teacher. StageCheckpointHook
# continues work_dirs/dinov3_vit7b16_pretrain_fsdp (the sharded stage 1) when it exists, else
# work_dirs/dinov3_vit7b16_pretrain; both load_from and the Gram teacher read its DCP folder.
_base_ = ['./dinov3_vit7b16_gram_anchor.py', '../_base_/schedules/dinov3_pretrain_fsdp.py']
strategy = dict(activation_checkpointing=True, fp8_filter='blocks')
