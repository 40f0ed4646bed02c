# DINO "ms" segmentation probe: frozen ViT, last four layers resized + concatenated,
# BN + 1x1 conv, multi-scale + flip test-time augmentation (official DINOv2 "+ms"):
# ratios [1.0, 1.32, 1.73, 2.28, 3.0] of a short side of 640, 640 px crops (the leaves use
# the *_640x640.py datasets), slide inference with 640 px windows at half-window stride.
_base_ = ['./seg_linear.py']
model = dict(
    backbone=dict(out_indices=[8, 9, 10, 11]),
    decode_head=dict(
        in_channels=[384, 384, 384, 384], in_index=[0, 1, 2, 3], channels=1536),
    data_preprocessor=dict(size=(640, 640)),
    test_cfg=dict(
        mode='slide', crop_size=(640, 640), stride=(320, 320),
        img_ratios=[1.0, 1.32, 1.73, 2.28, 3.0], flip=True))
