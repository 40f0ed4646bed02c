# DINO "ms" segmentation probe: frozen ViT, last four layers resized + concatenated,
# BN + 1x1 conv, multi-scale + flip test-time augmentation (official DINOv2 "+ms").
# img_ratios: the official notebook lists [1.0, 1.32, 1.73, 2.28, 3.0] (unverified:
# the hosted configs were not readable offline, and the DINOv2 paper may evaluate
# "+ms" with 640 px crops).
_base_ = ['./seg_linear.py']
model = dict(
    backbone=dict(out_indices=[8, 9, 10, 11]),
    decode_head=dict(
        in_channels=[384, 384, 384, 384], in_index=[0, 1, 2, 3], channels=1536),
    test_cfg=dict(
        mode='slide', crop_size=(512, 512), stride=(341, 341),
        img_ratios=[1.0, 1.32, 1.73, 2.28, 3.0], flip=True))
