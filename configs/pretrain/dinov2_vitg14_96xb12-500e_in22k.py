# DINOv2 ViT-g/14 on ImageNet-22k (official train/vitg14.yaml): as the ViT-L/14 recipe
# with the giant2 architecture (1536 wide, 40 blocks, fused SwiGLU) and 12 images/GPU.
# The official README gives no training time or result for this recipe; the released
# ViT-g/14 (trained on LVD-142M, not ImageNet-22k) reaches 83.5 % kNN / 86.5 % linear.
_base_ = ['./dinov2_vitl14_96xb32-500e_in22k.py']
batch_size_per_gpu = 12
model = dict(backbone=dict(arch='dinov2_vitg14', patch_size=14, ffn_layer='swiglufused'))
train_dataloader = dict(batch_size=batch_size_per_gpu)
param_scheduler = [
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='lr', base_value=2e-4,
         final_value=1e-6, total_iters=500 * 1250, warmup_iters=80 * 1250,
         freeze_last_layer_iters=1250, scaling_rule='sqrt_wrt_1024',
         batch_size_per_gpu=batch_size_per_gpu, by_epoch=False),
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='weight_decay', base_value=0.04,
         final_value=0.2, total_iters=500 * 1250, by_epoch=False),
]
