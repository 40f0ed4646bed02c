# dinov3_vit7b16_high_res_adapt (stage 3) sharded with FSDP2, as dinov3_vit7b16_pretrain_fsdp.py
# (official bf16 / fp32 reductions, compiled blocks, fp8 block matmuls, activation
# checkpointing). StageCheckpointHook continues work_dirs/dinov3_vit7b16_gram_anchor_fsdp when
# it exists, else work_dirs/dinov3_vit7b16_gram_anchor.
_base_ = ['./dinov3_vit7b16_high_res_adapt.py', '../_base_/schedules/dinov3_pretrain_fsdp.py']
strategy = dict(activation_checkpointing=True, fp8_filter='blocks')
