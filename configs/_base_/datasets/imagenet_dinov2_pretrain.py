# Multi-crop pretraining data (docs/reference.md §3.6-§3.7): 2 global crops 224 (scale
# 0.32-1) and 8 local crops 96 (scale 0.05-0.32) with the official photometric
# augmentations (including
# the official blur-probability quirk: effective 0.0 / 0.9 / 0.5), iBOT block masks on half
# of the global crops with ratios in [0.1, 0.5]. ImageNet-1k in the official layout with
# extra/*.npy (tools/dataset_converters/make_imagenet_extra.py makes extra/).
dataset_type = 'dino_mm.ImageNet'
data_root = 'data/imagenet'
patch_size = 16
global_crops_size = 224
local_crops_size = 96
train_pipeline = [
    dict(type='dino_mm.LoadImagePIL'),
    dict(type='dino_mm.DINOMultiCrop', global_crops_scale=(0.32, 1.0),
         local_crops_scale=(0.05, 0.32), local_crops_number=8,
         global_crops_size=global_crops_size, local_crops_size=local_crops_size,
         official_blur_quirk=True),
]
train_dataloader = dict(
    batch_size=64,
    num_workers=10,
    persistent_workers=True,
    pin_memory=True,
    drop_last=True,
    # Re-seeds the RNGs per sample so that `--resume` reproduces the uninterrupted run.
    sampler=dict(type='dino_mm.SeededInfiniteSampler', shuffle=True),
    collate_fn=dict(type='dino_mm.dino_collate', mask_ratio_min_max=(0.1, 0.5),
                    mask_probability=0.5, patch_size=patch_size),
    dataset=dict(type=dataset_type, data_root=data_root, split='TRAIN',
                 pipeline=train_pipeline))
