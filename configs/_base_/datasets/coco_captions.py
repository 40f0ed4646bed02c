# COCO-Captions (official layout: annotations/captions_{train,val}2017.json + {train,val}2017/)
# for dino.txt training, read by dino_mm.CocoCaptionsDataset: one sample per image with one
# of its captions drawn at random at every fetch (as the official dataset does). Train
# transform of the official recipe: RandomResizedCrop(224, bicubic) + horizontal flip; the
# caption travels in the data sample's metainfo and the model tokenises it.
dataset_type = 'dino_mm.CocoCaptionsDataset'
data_root = 'data/coco'

# Same loader convention as eval_imagenet.py (exact type 'LoadImageFromFile').
train_pipeline = [
    dict(type='LoadImageFromFile', _scope_='mmpretrain'),
    dict(type='mmpretrain.RandomResizedCrop', scale=224, interpolation='bicubic',
         backend='pillow'),
    dict(type='mmpretrain.RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='mmpretrain.PackInputs', meta_keys=('img_path', 'caption')),
]
train_dataloader = dict(
    batch_size=256,
    num_workers=8,
    persistent_workers=True,
    # every rank needs the same number of pairs for the gathered contrastive loss
    drop_last=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type=dataset_type, data_root=data_root,
                 ann_file='annotations/captions_train2017.json',
                 data_prefix=dict(img_path='train2017'), caption_sampling='random',
                 pipeline=train_pipeline))
