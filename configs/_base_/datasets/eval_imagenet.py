# ImageNet-1k for frozen-feature evaluation (official layout, read by dino_mm.ImageNet).
# Eval transform: Resize(256, bicubic) -> CenterCrop(224); linear-probe train transform:
# RandomResizedCrop(224, bicubic) + HFlip (docs/reference.md §5.1). mmcv decodes with cv2
# (BGR; the data preprocessor converts to RGB), so pixels differ slightly from the PIL
# pipeline upstream.
dataset_type = 'dino_mm.ImageNet'
data_root = 'data/imagenet'

data_preprocessor = dict(
    type='ImgDataPreprocessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True)

# The loader is typed exactly 'LoadImageFromFile' (not 'mmpretrain.LoadImageFromFile'):
# mmpretrain's ImageClassificationInferencer / FeatureExtractor drop only a step of that
# exact type (they load the image themselves); _scope_ still builds it from mmpretrain's
# registry under the dino_mm default scope.
eval_pipeline = [
    dict(type='LoadImageFromFile', _scope_='mmpretrain'),
    dict(type='mmpretrain.ResizeEdge', scale=256, edge='short', interpolation='bicubic',
         backend='pillow'),
    dict(type='mmpretrain.CenterCrop', crop_size=224),
    dict(type='mmpretrain.PackInputs'),
]
train_aug_pipeline = [
    dict(type='LoadImageFromFile', _scope_='mmpretrain'),
    dict(type='mmpretrain.RandomResizedCrop', scale=224, interpolation='bicubic',
         backend='pillow'),
    dict(type='mmpretrain.RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='mmpretrain.PackInputs'),
]

# Training split seen through the eval transform (k-NN / logistic-regression features).
train_feature_dataloader = dict(
    batch_size=256,
    num_workers=8,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type=dataset_type, data_root=data_root, split='TRAIN',
                 pipeline=eval_pipeline))
val_dataloader = dict(
    batch_size=256,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type=dataset_type, data_root=data_root, split='VAL',
                 pipeline=eval_pipeline))
test_dataloader = val_dataloader
