# DINO 12-epoch schedule (mmdet recipe): AdamW 1e-4, backbone lr x0.1, step at epoch 11.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}))
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [dict(type='MultiStepLR', begin=0, end=12, by_epoch=True,
                        milestones=[11], gamma=0.1)]
auto_scale_lr = dict(base_batch_size=16)
