# Inherit the small digits classifier and change only what differs:
#  - the data: any folder of class sub-folders (here the same layout, your own path),
#  - the head: a cosine classifier defined in this project folder,
#  - the schedule: a longer run with a frozen patch embedding.
# Run: python tools/train.py projects/example_custom_linear_probe/configs/vit-tiny_cosine-head_custom-folder.py
_base_ = ['../../../configs/demo/vit-tiny_cls_digits.py']

custom_imports = dict(imports=['projects.example_custom_linear_probe.cosine_head'],
                      allow_failed_imports=False)

data_root = 'data/my_images'  # <root>/train/<class>/*.png, <root>/val/<class>/*.png

model = dict(
    backbone=dict(frozen_stages=0),
    head=dict(_delete_=True, type='dino_mm.CosineClsHead', num_classes=10, in_channels=64,
              scale=16.0, loss=dict(type='mmpretrain.CrossEntropyLoss')))

train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader

train_cfg = dict(max_iters=400, val_interval=200)
param_scheduler = [dict(type='CosineAnnealingLR', T_max=400, by_epoch=False, eta_min=1e-5)]
