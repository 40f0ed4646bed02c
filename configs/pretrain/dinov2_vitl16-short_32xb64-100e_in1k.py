# DINOv2 ViT-L/16 "short" recipe on ImageNet-1k (official train/vitl16_short.yaml):
# 4 nodes x 8 A100-80GB (32 GPUs), 64 images/GPU (batch 2048), 100 epochs x 1250 iters.
# Expected (official README): 81.6 % kNN / 82.9 % linear on ImageNet-1k, ~1 day.
# Launch: GPUS=32 GPUS_PER_NODE=8 bash tools/slurm_train.sh PARTITION dinov2_vitl16 \
#         configs/pretrain/dinov2_vitl16-short_32xb64-100e_in1k.py
_base_ = [
    '../_base_/models/dinov2_ssl.py', '../_base_/datasets/imagenet_dinov2_pretrain.py',
    '../_base_/schedules/dinov2_pretrain.py', '../_base_/dinov2_pretrain_runtime.py'
]
