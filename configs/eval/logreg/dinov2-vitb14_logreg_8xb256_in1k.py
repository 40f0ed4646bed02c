# Published (docs/reference.md §5.11, ImageNet-1k): k-NN top-1 82.1, linear top-1 84.5.
_base_ = ['../../_base_/eval_logreg.py']

model = dict(backbone=dict(arch='dinov2_vitb14'))
# Upstream runs v2 evals under fp16 autocast on GPU: model.precision='fp16'.
