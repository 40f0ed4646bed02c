# DINOv3 ViT-S/16 pretraining on your own folder of images: no labels, no labels.txt, no
# extra/*.npy -- every image under the folder (flat or nested sub-folders; .jpg .jpeg .png
# .bmp .ppm .pgm .tif .tiff .webp, any case) is a sample (dino_mm.ImageFolderDataset).
#
#   python tools/train.py configs/pretrain/dinov3_vits16_folder.py \
#       --cfg-options train_dataloader.dataset.data_root=/path/to/images
#
# The key is `train_dataloader.dataset.data_root` (the top-level `data_root` below is
# resolved when the file is read; `--cfg-options data_root=...` alone does not reach the
# dataset). Export the teacher backbone with tools/convert/pretrain_to_backbone.py; the file
# records its architecture (RoPE, 4 storage tokens, ...), so later tools need no overrides.
#
# Small-data defaults as dinov2_vits14_folder.py: 32 images per GPU, 10k iterations
# (40 x 250, warm-up 1k), 16384 prototypes in the DINO and the iBOT head, the DINOv3 losses
# (Sinkhorn-Knopp, KoLeo, separate iBOT head), multi-crop 2 x 224 + 8 x 96, a checkpoint
# every 1k iterations (last 2 kept). Random init (see dinov2_vits14_folder.py).
_base_ = [
    '../_base_/models/dinov3_ssl.py', '../_base_/datasets/imagenet_dinov2_pretrain.py',
    '../_base_/schedules/dinov2_pretrain.py', '../_base_/dinov2_pretrain_runtime.py'
]
data_root = 'data/my_images'
epoch_length = 250
epochs = 40
total_iters = epochs * epoch_length
batch_size_per_gpu = 32
patch_size = 16
lr = 0.001
warmup_iters = total_iters // 10

model = dict(
    backbone=dict(arch='dinov3_vits16', drop_path_rate=0.1),
    dino_head=dict(out_dim=16384),
    ibot_head=dict(out_dim=16384))
train_dataloader = dict(
    batch_size=batch_size_per_gpu,
    num_workers=4,
    collate_fn=dict(patch_size=patch_size),
    dataset=dict(_delete_=True, type='dino_mm.ImageFolderDataset', data_root=data_root,
                 pipeline=[
                     dict(type='dino_mm.LoadImagePIL'),
                     dict(type='dino_mm.DINOMultiCrop', global_crops_scale=(0.32, 1.0),
                          local_crops_scale=(0.05, 0.32), local_crops_number=8,
                          global_crops_size=224, local_crops_size=96,
                          horizontal_flips=True, official_blur_quirk=True)
                 ]))
optim_wrapper = dict(optimizer=dict(lr=lr),
                     paramwise_cfg=dict(variant='dinov3', dino_head_wd_multiplier=1.0))
param_scheduler = [
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='lr', base_value=lr,
         final_value=1e-6, total_iters=total_iters, warmup_iters=warmup_iters,
         freeze_last_layer_iters=epoch_length, scaling_rule='sqrt_wrt_1024_v3',
         batch_size_per_gpu=batch_size_per_gpu, by_epoch=False),
    dict(type='dino_mm.DINOCosineParamScheduler', param_name='weight_decay', base_value=0.04,
         final_value=0.4, total_iters=total_iters, by_epoch=False),
]
custom_hooks = [
    dict(type='dino_mm.TeacherTempHook', warmup_teacher_temp=0.04, teacher_temp=0.07,
         warmup_iters=3 * warmup_iters),
    dict(type='dino_mm.TeacherMomentumHook', momentum_teacher=0.992,
         final_momentum_teacher=1.0),
]
train_cfg = dict(max_iters=total_iters)
default_hooks = dict(checkpoint=dict(interval=1000, max_keep_ckpts=2))
