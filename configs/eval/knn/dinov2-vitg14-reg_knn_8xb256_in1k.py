# Published (docs/reference.md §5.11, ImageNet-1k): k-NN top-1 83.7, linear top-1 87.1.
_base_ = ['../../_base_/eval_knn.py']

model = dict(backbone=dict(arch='dinov2_vitg14_reg'))
# Upstream runs v2 evals under fp16 autocast on GPU: model.precision='fp16'.
