# Published (docs/reference.md §5.11, ImageNet-1k): k-NN top-1 83.5, linear top-1 86.3.
_base_ = ['../../_base_/eval_linear.py']

model = dict(backbone=dict(arch='dinov2_vitl14'))
