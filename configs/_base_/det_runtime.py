# Runtime for detection configs: dino_mm's runtime in the mmdet scope, with mmdet's
# visualiser (tools/test.py --show-dir writes images with drawn boxes).
_base_ = ['./default_runtime.py']
default_scope = 'mmdet'
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3),
    visualization=dict(type='DetVisualizationHook'))
visualizer = dict(type='DetLocalVisualizer', vis_backends=[dict(type='LocalVisBackend')],
                  name='visualizer')
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True)
