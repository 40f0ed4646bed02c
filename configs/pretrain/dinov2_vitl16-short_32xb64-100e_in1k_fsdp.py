# dinov2_vitl16-short_32xb64-100e_in1k sharded with FSDP2 (per-block wrapping, official fp16 compute with a sharded gradient scaler, fp32 head reductions).
# Launch: GPUS=... GPUS_PER_NODE=8 bash tools/slurm_train.sh PARTITION JOB \
#         configs/pretrain/dinov2_vitl16-short_32xb64-100e_in1k_fsdp.py
# Checkpoints are folders; consolidate one with tools/convert/consolidate_sharded.py.
_base_ = ['./dinov2_vitl16-short_32xb64-100e_in1k.py', '../_base_/schedules/dinov2_pretrain_fsdp.py']
# Official ShardedGradScaler (dynamic scale from 2**16); the optimizer, constructor and
# param-wise settings of the recipe carry over.
optim_wrapper = dict(type='dino_mm.FP16OptimWrapper', loss_scale='dynamic')
