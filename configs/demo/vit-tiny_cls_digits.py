# A small supervised classifier (mmpretrain ImageClassifier + dino_mm ViT) on the embedded
# digits data (tools/dataset_converters/make_digits_dataset.py). Trains in seconds on CPU;
# used by the foundation tests (train / resume / multi-process) and by projects/.
_base_ = ['../_base_/default_runtime.py']

data_root = 'data/digits'
num_classes = 10

model = dict(
    type='mmpretrain.ImageClassifier',
    data_preprocessor=dict(
        type='mmpretrain.ClsDataPreprocessor', num_classes=num_classes,
        mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True),
    backbone=dict(
        type='dino_mm.DinoVisionTransformer', arch='dinov2_vits14', img_size=32,
        patch_size=8, embed_dim=64, depth=2, num_heads=2, layerscale_init=1e-5,
        out_type='cls', out_indices=[-1]),
    head=dict(
        type='mmpretrain.LinearClsHead', num_classes=num_classes, in_channels=64,
        loss=dict(type='mmpretrain.CrossEntropyLoss')),
)

# The loader is typed exactly 'LoadImageFromFile' (not 'mmpretrain.LoadImageFromFile'):
# mmpretrain's ImageClassificationInferencer / FeatureExtractor drop only a step of that
# exact type (they load the image themselves); _scope_ still builds it from mmpretrain's
# registry under the dino_mm default scope.
train_pipeline = [
    dict(type='LoadImageFromFile', _scope_='mmpretrain'),
    dict(type='mmpretrain.RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='mmpretrain.PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', _scope_='mmpretrain'),
    dict(type='mmpretrain.PackInputs'),
]
train_dataloader = dict(
    batch_size=32, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='mmpretrain.CustomDataset', data_root=data_root, data_prefix='train',
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=64, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='mmpretrain.CustomDataset', data_root=data_root, data_prefix='val',
                 pipeline=test_pipeline))
val_evaluator = dict(type='mmpretrain.Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05))
param_scheduler = [dict(type='CosineAnnealingLR', T_max=200, by_epoch=False, eta_min=1e-5)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=200, val_interval=100)
val_cfg = dict()
# The backbone's mask token is only used by masked (iBOT) inputs: let DDP skip it.
find_unused_parameters = True
test_cfg = dict()

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=50, by_epoch=False, max_keep_ckpts=3))
