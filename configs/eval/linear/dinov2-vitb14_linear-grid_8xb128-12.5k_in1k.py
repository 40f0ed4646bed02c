# Published (docs/reference.md §5.11, ImageNet-1k): k-NN top-1 82.1, linear top-1 84.5.
_base_ = ['../../_base_/eval_linear.py']

model = dict(backbone=dict(arch='dinov2_vitb14'))
