# dinov2_vitl14_96xb32-500e_in22k with plain DDP (fallback when FSDP is not wanted, e.g. small models or debugging):
# dino_mm.DINODistributedDataParallel keeps the per-sub-module gradient clipping and the
# non-finite-loss stop of dino_mm.DINOv2.train_step, which MMEngine's DDP wrapper skips.
_base_ = ['./dinov2_vitl14_96xb32-500e_in22k.py']
model_wrapper_cfg = dict(type='dino_mm.DINODistributedDataParallel', broadcast_buffers=False,
                         find_unused_parameters=False)
