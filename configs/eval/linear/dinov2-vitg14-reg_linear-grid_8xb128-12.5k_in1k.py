# Published (docs/reference.md §5.11, ImageNet-1k): k-NN top-1 83.7, linear top-1 87.1.
_base_ = ['../../_base_/eval_linear.py']

model = dict(backbone=dict(arch='dinov2_vitg14_reg'))
