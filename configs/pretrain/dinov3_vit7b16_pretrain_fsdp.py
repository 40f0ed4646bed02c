# dinov3_vit7b16_pretrain sharded with FSDP2 (per-block wrapping, official bf16 compute with
# fp32 gradient reductions, compiled blocks, fp8 block matmuls; activation checkpointing on,
# as the official 7B run).
# Launch: GPUS=256 GPUS_PER_NODE=8 bash tools/slurm_train.sh PARTITION JOB \
#         configs/pretrain/dinov3_vit7b16_pretrain_fsdp.py
# Checkpoints are DCP folders. Stages 2 and 3 sharded: dinov3_vit7b16_gram_anchor_fsdp.py and
# dinov3_vit7b16_high_res_adapt_fsdp.py, which find this run's folder by convention.
_base_ = ['./dinov3_vit7b16_pretrain.py', '../_base_/schedules/dinov3_pretrain_fsdp.py']
# official fp8_enabled + fp8_filter 'blocks': the block linears compute with fp8 products
# (needs fp8 tensor cores, H100 and newer, to be faster; set None elsewhere)
strategy = dict(activation_checkpointing=True, fp8_filter='blocks')
