# Published (docs/reference.md §5.11, ImageNet-1k): k-NN top-1 82.0, linear top-1 84.6.
_base_ = ['../../_base_/eval_knn.py']

model = dict(backbone=dict(arch='dinov2_vitb14_reg'))
# Upstream runs v2 evals under fp16 autocast on GPU: model.precision='fp16'.
