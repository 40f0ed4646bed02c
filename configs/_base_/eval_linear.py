# Linear-probe grid (docs/reference.md §5.3): 13 lrs x n_last_blocks {1, 4} x avgpool
# {False, True}, all trained in one pass on frozen features; SGD momentum 0.9, wd 0,
# cosine to 0,
# 10 x 1250 iterations, lr scaled by (128 x GPUs) / 256; best classifier on val. Run with
#   bash tools/dist_train.sh configs/eval/linear/<leaf>.py 8 \
#       --cfg-options model.backbone_checkpoint=<official backbone file>
_base_ = ['./datasets/eval_imagenet.py', './default_runtime.py']

batch_size_per_gpu = 128
max_iters = 12500
model = dict(
    type='dino_mm.LinearProbeGrid',
    backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vits14'),
    backbone_checkpoint=None,
    num_classes=1000,
    n_last_blocks_list=(1, 4),
    avgpools=(False, True),
    batch_size_per_gpu=batch_size_per_gpu,
    # 'auto': bf16 on CPUs with native bf16 and on CUDA, else fp32 ('fp16' on GPU: upstream)
    precision='auto',
    data_preprocessor={{_base_.data_preprocessor}})

train_dataloader = dict(
    batch_size=batch_size_per_gpu,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type={{_base_.dataset_type}}, data_root={{_base_.data_root}}, split='TRAIN',
                 pipeline={{_base_.train_aug_pipeline}}))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=1.0, momentum=0.9, weight_decay=0.0),
    constructor='dino_mm.LinearProbeOptimWrapperConstructor')
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=max_iters, eta_min=0.0, by_epoch=False,
         begin=0, end=max_iters)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=1250)
val_cfg = dict(type='ValLoop')
val_evaluator = dict(type='dino_mm.LinearProbeMetric', topk=(1, 5))
# A TestLoop, not the ValLoop: a ValLoop under Runner.test() fires the after_val_epoch
# hooks, and the save_best checkpoint hook then fails outside training.
test_cfg = dict(type='TestLoop')
test_evaluator = val_evaluator
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=1250, max_keep_ckpts=1,
                                     save_best='linear/top1', rule='greater'))
