# The dino.txt demo (`make demo-dinotxt`, tools/demo_dinotxt.py): the official dino.txt
# recipe -- frozen vision backbone, two trainable head blocks, a causal text transformer
# trained from scratch, the gathered CLIP loss, AdamW with the official betas / decay rule
# and warm-up + cosine -- shrunk to train on 2 CPU cores in a few minutes. Data: the
# training split of scikit-learn's digits with templated captions in the COCO-Captions
# layout (tools/dataset_converters/make_digits_captions.py); zero-shot evaluation on the
# held-out split of data/digits (ImageNet layout) with class names and prompts only.
_base_ = [
    '../_base_/models/dinotxt_tet1280d20h24l.py', '../_base_/schedules/dinotxt_50k.py',
    '../_base_/default_runtime.py'
]
captions_root = 'data/digits_captions'
digits_root = 'data/digits'
max_iters = 600
warmup_iters = 60
batch_size = 64
class_names = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine']

model = dict(
    # A small ViT of the DINOv2 demo's shape; tools/demo_dinotxt.py passes the DINOv2 demo's
    # pretrained teacher as backbone_checkpoint when it exists, else it stays random.
    vision_backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vits14',
                         patch_size=8, img_size=32, embed_dim=96, depth=4, num_heads=4,
                         block_chunks=0, layerscale_init=1.0),
    backbone_checkpoint=None,
    text_backbone=dict(context_length=32, dim=64, num_heads=4, num_layers=2),
    embed_dim=192,
    vision=dict(head_drop_path=0.0),
    # the random frozen backbone exists nowhere else: keep it in the checkpoints (0.5 MB)
    # so that tools/test.py can evaluate them
    save_frozen_backbone=True,
    zero_shot=dict(class_names=class_names, templates=['an image of the digit {}.'],
                   part='full'))

train_pipeline = [
    dict(type='LoadImageFromFile', _scope_='mmpretrain'),
    dict(type='mmpretrain.RandomResizedCrop', scale=32, crop_ratio_range=(0.6, 1.0),
         interpolation='bicubic', backend='pillow'),
    dict(type='mmpretrain.PackInputs', meta_keys=('img_path', 'caption')),
]
train_dataloader = dict(
    batch_size=batch_size, num_workers=0, persistent_workers=False, drop_last=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='dino_mm.CocoCaptionsDataset', data_root=captions_root,
                 ann_file='annotations/captions_train2017.json',
                 data_prefix=dict(img_path='train2017'), caption_sampling='random',
                 pipeline=train_pipeline))
test_pipeline = [
    dict(type='LoadImageFromFile', _scope_='mmpretrain'),
    dict(type='mmpretrain.PackInputs'),
]
test_dataloader = dict(
    batch_size=128, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    # class folders d0000000 .. d0000009 sort in label order, as class_names
    dataset=dict(type='mmpretrain.CustomDataset', data_root=digits_root, data_prefix='val',
                 pipeline=test_pipeline))
test_evaluator = dict(type='mmpretrain.Accuracy', topk=(1, ))
test_cfg = dict()

lr = 2e-3
optim_wrapper = dict(optimizer=dict(lr=lr))
param_scheduler = [
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='lr', base_value=lr,
         final_value=0.0, total_iters=max_iters, warmup_iters=warmup_iters,
         start_warmup_value=0.0, schedule_version='v2', by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters + 1)
default_hooks = dict(logger=dict(interval=50),
                     checkpoint=dict(by_epoch=False, interval=max_iters // 2, max_keep_ckpts=2))
randomness = dict(seed=0)
