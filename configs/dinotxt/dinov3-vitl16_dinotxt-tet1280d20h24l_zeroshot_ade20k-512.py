# Zero-shot ADE20K semantic segmentation with dino.txt, as the official DINOv3 notebook
# (notebooks/dinotxt_segmentation_inference.ipynb): per class, OpenAI's 80 ImageNet prompt
# templates -> the patch half of the text embeddings, normalised, averaged, renormalised;
# per image, the cosines of the L2-normalised head patch tokens with them. Images: short side
# 512 (bicubic), ImageNet normalisation; sliding windows of 384 every 192 pixels, softmax
# per window, averaged, resized to the label size, argmax; mmseg's mIoU (label 0 ignored).
#   python tools/test.py configs/dinotxt/dinov3-vitl16_dinotxt-tet1280d20h24l_zeroshot_ade20k-512.py \
#       dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth
# (the checkpoint holds the dino.txt heads -- a released file or a dino.txt training
# checkpoint; model.dinotxt.backbone_checkpoint names the frozen backbone file). Nothing is
# trained: there is no train part. `--cfg-options model.mode=whole` gives the notebook's
# 'whole' mode (the image stretched to whole patches, no windows).
_base_ = [
    '../_base_/models/dinotxt_tet1280d20h24l.py', '../_base_/datasets/ade20k.py',
    '../_base_/schedules/seg_runtime.py'
]
# The 150 ADE20K class names in label order (label 1..150 -> 0..149 after
# reduce_zero_label), written here rather than read from a file so the config is complete on
# its own and `print(cfg)` shows what the text tower is prompted with. They are mmseg's
# ADE20KDataset.METAINFO['classes'], which are the notebook's names too ('bed ' there and in
# mmseg: the class-name loader strips the space, and the CLIP tokenizer ignores it anyway).
ade20k_class_names = [
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass',
    'cabinet', 'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain',
    'chair', 'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field',
    'armchair', 'seat', 'fence', 'desk', 'rock', 'wardrobe', 'lamp', 'bathtub', 'railing',
    'cushion', 'base', 'box', 'column', 'signboard', 'chest of drawers', 'counter', 'sand', 'sink',
    'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path', 'stairs', 'runway', 'case',
    'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase', 'blind',
    'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove', 'palm',
    'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus',
    'towel', 'light', 'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth',
    'television receiver', 'airplane', 'dirt track', 'apparel', 'pole', 'land', 'bannister',
    'escalator', 'ottoman', 'bottle', 'buffet', 'poster', 'stage', 'van', 'ship', 'fountain',
    'conveyer belt', 'canopy', 'washer', 'plaything', 'swimming pool', 'stool', 'barrel', 'basket',
    'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank',
    'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen',
    'blanket', 'sculpture', 'hood', 'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan',
    'pier', 'crt screen', 'plate', 'monitor', 'bulletin board', 'shower', 'radiator', 'glass',
    'clock', 'flag'
]

# The DINOTxt of the base file with this release's backbone (the twin config changes these).
dinotxt = dict(
    _base_.model,
    vision_backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vitl16'),
    backbone_checkpoint='dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth',
    release='dinov3',
    zero_shot=None)  # its classification settings are not used here
model = dict(
    _delete_=True,
    type='dino_mm.DINOTxtZeroShotSegmentor',
    dinotxt=dinotxt,
    class_names=ade20k_class_names,
    templates='openai_imagenet',
    mode='slide',
    crop_size=(384, 384),
    stride=(192, 192),
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                           seg_pad_val=255))
del dinotxt  # lives on in model.dinotxt only, so overrides go to one place

# The notebook's image: decoded by PIL, short side resized to 512 with PIL's bicubic (the
# long-side bound 8192 never binds on ADE20K; mmcv rounds the long side where the notebook
# floors it, at most one pixel apart). Labels stay at full size (loaded after Resize):
# predictions are resized to them, as the notebook does.
test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    dict(type='Resize', scale=(8192, 512), keep_ratio=True, interpolation='bicubic',
         backend='pillow'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='dino_mm.CheckSegAnnotation', num_classes=150),
    dict(type='PackSegInputs')
]
test_dataloader = dict(
    batch_size=1,  # images keep their aspect ratio: one size per batch
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='ADE20KDataset',
        data_root='data/ade/ADEChallengeData2016',
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_evaluator = dict(type='mmseg.IoUMetric', iou_metrics=['mIoU'])
test_cfg = dict(type='TestLoop')
# `tools/test.py --tta`: horizontal-flip averaging at the notebook's scale (not part of the
# official protocol).
tta_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(8192, 512), keep_ratio=True, interpolation='bicubic',
              backend='pillow')],
        [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')],
        [dict(type='LoadAnnotations', reduce_zero_label=True)],
        [dict(type='PackSegInputs')]])
]
# Evaluation only.
train_pipeline = None
train_dataloader = None
val_dataloader = None
val_cfg = None
val_evaluator = None
