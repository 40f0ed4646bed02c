# No per-model ImageNet-1k k-NN / linear number in the official repos
# (docs/reference.md §5.11: paper only).
_base_ = ['../../_base_/eval_linear.py']

# DINOv3 grid: last block only, with average pooling.
model = dict(backbone=dict(arch='dinov3_vitl16'), n_last_blocks_list=(1, ), avgpools=(True, ))
