# ViT-Adapter (frozen DINO ViT) + Mask2Former (mmseg Mask2FormerHead, mmdet pieces).
# mmseg's Mask2FormerHead breaks with mmseg's own sliding window; DinoEncoderDecoder
# gives each crop its own metas, so both 'whole' and 'slide' work.
# mmseg's Mask2FormerHead needs mmdet registered: leaves set
# custom_imports = dict(imports=['mmdet.models', 'dino_mm.datasets.segmentation']).
# Only `model` is defined here: mmengine forbids keys repeated across `_base_` files.
model = dict(
    type='dino_mm.DinoEncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=(512, 512)),
    freeze_backbone=False,  # the ViT inside the adapter is frozen by the adapter
    pad_to_patch=False,  # the adapter pads for its ViT only (convs work at any size)
    backbone=dict(
        type='dino_mm.DinoViTAdapter',
        backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vitg14'),
        interaction_indexes=[9, 19, 29, 39],
        conv_inplane=64,
        deform_num_heads=16,
        n_points=4,
        deform_ratio=0.5,
        cffn_ratio=0.25,
        use_extra_extractor=True,
        add_vit_feature=True,
        norm_cfg=dict(type='SyncBN', requires_grad=True)),
    decode_head=dict(
        type='Mask2FormerHead',
        in_channels=[1536, 1536, 1536, 1536],
        strides=[4, 8, 16, 32],
        feat_channels=256,
        out_channels=256,
        num_classes=150,
        num_queries=100,
        num_transformer_feat_level=3,
        align_corners=False,
        pixel_decoder=dict(
            type='mmdet.MSDeformAttnPixelDecoder',
            num_outs=3,
            norm_cfg=dict(type='GN', num_groups=32),
            act_cfg=dict(type='ReLU'),
            encoder=dict(
                num_layers=6,
                layer_cfg=dict(
                    self_attn_cfg=dict(
                        embed_dims=256, num_heads=8, num_levels=3,
                        num_points=4, im2col_step=64, dropout=0.0, batch_first=True,
                        norm_cfg=None, init_cfg=None),
                    ffn_cfg=dict(
                        embed_dims=256, feedforward_channels=1024,
                        num_fcs=2, ffn_drop=0.0, act_cfg=dict(type='ReLU', inplace=True))),
                init_cfg=None),
            positional_encoding=dict(num_feats=128, normalize=True),
            init_cfg=None),
        enforce_decoder_input_project=False,
        positional_encoding=dict(num_feats=128, normalize=True),
        transformer_decoder=dict(
            return_intermediate=True,
            num_layers=9,
            layer_cfg=dict(
                self_attn_cfg=dict(
                    embed_dims=256, num_heads=8, attn_drop=0.0, proj_drop=0.0,
                    dropout_layer=None, batch_first=True),
                cross_attn_cfg=dict(
                    embed_dims=256, num_heads=8, attn_drop=0.0, proj_drop=0.0,
                    dropout_layer=None, batch_first=True),
                ffn_cfg=dict(
                    embed_dims=256, feedforward_channels=2048,
                    num_fcs=2, act_cfg=dict(type='ReLU', inplace=True), ffn_drop=0.0,
                    dropout_layer=None, add_identity=True)),
            init_cfg=None),
        loss_cls=dict(
            type='mmdet.CrossEntropyLoss', use_sigmoid=False, loss_weight=2.0,
            reduction='mean', class_weight=[1.0] * 150 + [0.1]),
        loss_mask=dict(
            type='mmdet.CrossEntropyLoss', use_sigmoid=True, reduction='mean',
            loss_weight=5.0),
        loss_dice=dict(
            type='mmdet.DiceLoss', use_sigmoid=True, activate=True, reduction='mean',
            naive_dice=True, eps=1.0, loss_weight=5.0),
        train_cfg=dict(
            num_points=12544,
            oversample_ratio=3.0,
            importance_sample_ratio=0.75,
            assigner=dict(
                type='mmdet.HungarianAssigner',
                match_costs=[
                    dict(type='mmdet.ClassificationCost', weight=2.0),
                    dict(type='mmdet.CrossEntropyLossCost', weight=5.0, use_sigmoid=True),
                    dict(type='mmdet.DiceCost', weight=5.0, pred_act=True, eps=1.0)
                ]),
            sampler=dict(type='mmdet.MaskPseudoSampler'))),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
