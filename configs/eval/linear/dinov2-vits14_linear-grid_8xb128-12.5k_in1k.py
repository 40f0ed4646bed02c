# Published (docs/reference.md §5.11, ImageNet-1k): k-NN top-1 79.0, linear top-1 81.1.
_base_ = ['../../_base_/eval_linear.py']

model = dict(backbone=dict(arch='dinov2_vits14'))
