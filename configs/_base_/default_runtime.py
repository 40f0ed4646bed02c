# Runtime settings shared by every dino_mm config (MMEngine conventions).
default_scope = 'dino_mm'

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
)

# The checkpoint hook above is dino_mm's SafeCheckpointHook once dino_mm is imported: its
# files hold only tensors and builtin containers, so `--resume` loads them with
# torch.load(weights_only=True) on torch >= 2.6, and they are written atomically and never
# with NaN weights (dino_mm/engine/checkpoint.py).
custom_hooks = []

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends)

log_processor = dict(by_epoch=False, window_size=10)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
