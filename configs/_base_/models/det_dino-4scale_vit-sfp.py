# mmdet DINO (4 feature levels) on a plain dino_mm ViT through a simple feature pyramid.
# Detection configs run in the mmdet scope (configs/_base_/det_runtime.py) so mmdet's
# internal builders (assigners, costs, layers) resolve; dino_mm modules carry the
# 'dino_mm.' prefix.
embed_dim = 1024  # set by the leaf config together with the backbone arch
model = dict(
    type='DINO',
    num_queries=900,
    with_box_refine=True,
    as_two_stage=True,
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                           pad_size_divisor=16),
    backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vitl16',
                  out_indices=[5, 11, 17, 23], out_type='featmap', norm_out=True,
                  frozen_stages=-1),
    neck=dict(type='dino_mm.ViTSimpleFeaturePyramid', in_channels=embed_dim,
              out_channels=256, scale_factors=(2.0, 1.0, 0.5, 0.25), in_index=(0, 1, 2, 3)),
    encoder=dict(num_layers=6,
                 layer_cfg=dict(self_attn_cfg=dict(embed_dims=256, num_levels=4, dropout=0.0),
                                ffn_cfg=dict(embed_dims=256, feedforward_channels=2048,
                                             ffn_drop=0.0))),
    decoder=dict(num_layers=6, return_intermediate=True,
                 layer_cfg=dict(self_attn_cfg=dict(embed_dims=256, num_heads=8, dropout=0.0),
                                cross_attn_cfg=dict(embed_dims=256, num_levels=4, dropout=0.0),
                                ffn_cfg=dict(embed_dims=256, feedforward_channels=2048,
                                             ffn_drop=0.0)),
                 post_norm_cfg=None),
    positional_encoding=dict(num_feats=128, normalize=True, offset=0.0, temperature=20),
    bbox_head=dict(type='DINOHead', num_classes=80, sync_cls_avg_factor=True,
                   loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                                 loss_weight=1.0),
                   loss_bbox=dict(type='L1Loss', loss_weight=5.0),
                   loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
    dn_cfg=dict(label_noise_scale=0.5, box_noise_scale=1.0,
                group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=100)),
    train_cfg=dict(assigner=dict(type='HungarianAssigner', match_costs=[
        dict(type='FocalLossCost', weight=2.0),
        dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
        dict(type='IoUCost', iou_mode='giou', weight=2.0)])),
    test_cfg=dict(max_per_img=300))
