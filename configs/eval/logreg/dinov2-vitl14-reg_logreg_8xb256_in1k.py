# Published (docs/reference.md §5.11, ImageNet-1k): k-NN top-1 83.8, linear top-1 86.7.
_base_ = ['../../_base_/eval_logreg.py']

model = dict(backbone=dict(arch='dinov2_vitl14_reg'))
# Upstream runs v2 evals under fp16 autocast on GPU: model.precision='fp16'.
