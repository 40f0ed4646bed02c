# The embedded demo (`make demo`): a small ViT pretrained with the full DINOv2 algorithm
# (DINO + iBOT + KoLeo, multi-crop, EMA teacher, official schedules) on scikit-learn's
# handwritten digits written in the official ImageNet layout (tools/demo.py builds it
# offline). Inherits the real pretraining recipe and shrinks model, crops and schedule so
# it trains on 2 CPU cores in about four minutes.
#
# It differs from the official recipe only where the demo ablation
# (benchmarks/demo_ablation.py, table in benchmarks/README.md) shows that 32 px digits and a
# few thousand images need it: LayerScale starts at 1.0 (at 1e-5 a 4-block ViT gives the
# same class token for every image and kNN starts at chance), 64 prototypes instead of
# 1024, larger crops, no blur / solarisation (both erase an 8x8-pixel digit), and 1000
# iterations.
_base_ = [
    '../_base_/models/dinov2_ssl.py', '../_base_/datasets/imagenet_dinov2_pretrain.py',
    '../_base_/schedules/dinov2_pretrain.py', '../_base_/dinov2_pretrain_runtime.py'
]
data_root = 'data/digits'
patch_size = 8
global_crops_size = 32
local_crops_size = 16
max_iters = 1000
batch_size = 32

model = dict(
    backbone=dict(arch='dinov2_vits14', patch_size=patch_size, img_size=global_crops_size,
                  embed_dim=96, depth=4, num_heads=4, drop_path_rate=0.1, block_chunks=0,
                  layerscale_init=1.0),
    dino_head=dict(out_dim=64, hidden_dim=256, bottleneck_dim=64))

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=2,  # the multi-crop augmentation costs as much as the model step
    persistent_workers=True,
    pin_memory=False,
    collate_fn=dict(patch_size=patch_size),
    dataset=dict(data_root=data_root, pipeline=[
        dict(type='dino_mm.LoadImagePIL'),
        dict(type='dino_mm.DINOMultiCrop', global_crops_scale=(0.5, 1.0),
             local_crops_scale=(0.2, 0.5), local_crops_number=2,
             global_crops_size=global_crops_size, local_crops_size=local_crops_size,
             official_blur_quirk=False, blur_probabilities=(0.0, 0.0, 0.0),
             solarize_probability=0.0)
    ]))

# Official rules on a short schedule: linear warm-up then cosine (lr scaled by the batch
# with sqrt_wrt_1024), wd 0.04 -> 0.4, last layer frozen for the first 3 %.
param_scheduler = [
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='lr', base_value=0.004,
         final_value=1e-6, total_iters=max_iters, warmup_iters=max_iters // 10,
         freeze_last_layer_iters=max_iters // 30, scaling_rule='sqrt_wrt_1024',
         batch_size_per_gpu=batch_size, by_epoch=False),
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='weight_decay', base_value=0.04,
         final_value=0.4, total_iters=max_iters, by_epoch=False),
]
custom_hooks = [
    dict(type='dino_mm.TeacherTempHook', warmup_teacher_temp=0.04, teacher_temp=0.07,
         warmup_iters=max_iters // 3),
    dict(type='dino_mm.TeacherMomentumHook', momentum_teacher=0.992,
         final_momentum_teacher=1.0),
]
train_cfg = dict(max_iters=max_iters)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=250, max_keep_ckpts=2, save_last=True))
randomness = dict(seed=0, deterministic=False)
