# DINOv3 meta-architecture with the official defaults (dinov3 ssl_default_config.yaml,
# docs/reference.md §4.1): ViT-L/16 with RoPE, 4 storage tokens, k-masked qkv bias; DINO
# head with a plain linear prototype layer (no weight norm) and a separate iBOT head (65536 /
# 256 / 2048 / 3);
# Sinkhorn-Knopp targets, global_ignore_diagonal, KoLeo 0.1 (mean over crops x 2), iBOT 1.0.
# Gram anchoring is off; the gram_anchor / high_res_adapt stage configs switch it on.
model = dict(
    type='dino_mm.DINOv3',
    backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vitl16', img_size=224,
                  drop_path_rate=0.3, layerscale_init=1e-5),
    dino_head=dict(type='dino_mm.DINOHead', out_dim=65536, hidden_dim=2048,
                   bottleneck_dim=256, nlayers=3, weight_norm_last_layer=False),
    ibot_head=dict(type='dino_mm.DINOHead', out_dim=65536, hidden_dim=2048,
                   bottleneck_dim=256, nlayers=3, weight_norm_last_layer=False),
    dino_loss_weight=1.0,
    koleo_loss_weight=0.1,
    # per-rank KoLeo (official koleo_loss_distributed: false); the 7B high-res stage
    # switches to the all-rank variant (dino_mm.KoLeoLossDistributed)
    koleo_loss_distributed=False,
    koleo_topk=1,
    koleo_distributed_loss_group_size=None,
    ibot_loss_weight=1.0,
    centering='sinkhorn_knopp',
    global_ignore_diagonal=True,
    student_temp=0.1,
    clip_grad=3.0)
