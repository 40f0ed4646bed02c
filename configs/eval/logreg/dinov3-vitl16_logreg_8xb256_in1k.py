# No per-model ImageNet-1k k-NN / linear number in the official repos
# (docs/reference.md §5.11: paper only).
_base_ = ['../../_base_/eval_logreg.py']

model = dict(backbone=dict(arch='dinov3_vitl16'))
# DINOv3 models are run in fp32/bf16 upstream.
