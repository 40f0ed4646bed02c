# DINOv2 meta-architecture with the official defaults (ssl_default_config.yaml,
# docs/reference.md §3.1): ViT-L/16, drop path 0.3 (uniform), LayerScale 1e-5, DINO head
# 65536 prototypes (bottleneck 256, hidden 2048, 3 layers) shared with iBOT, KoLeo 0.1,
# softmax centering.
model = dict(
    type='dino_mm.DINOv2',
    backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vitl14', patch_size=16,
                  img_size=224, drop_path_rate=0.3, drop_path_uniform=True,
                  layerscale_init=1e-5, num_register_tokens=0, interpolate_offset=0.1,
                  interpolate_antialias=False, block_chunks=4),
    dino_head=dict(type='dino_mm.DINOHead', out_dim=65536, hidden_dim=2048,
                   bottleneck_dim=256, nlayers=3),
    ibot_head=None,
    dino_loss_weight=1.0,
    koleo_loss_weight=0.1,
    ibot_loss_weight=1.0,
    centering='centering',
    student_temp=0.1,
    center_momentum=0.9,
    clip_grad=3.0)
