# k-NN evaluation (docs/reference.md §5.2): L2-normalised class token, cosine similarity,
# softmax(sim / 0.07) voting, k in (10, 20, 100, 200). Run with
#   python tools/test.py configs/eval/knn/<leaf>.py <backbone.pth> --work-dir <dir>
# (set model.backbone_checkpoint=<official backbone file>; it is loaded strictly).
_base_ = ['./datasets/eval_imagenet.py', './default_runtime.py']

model = dict(
    type='dino_mm.FrozenFeatureModel',
    backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vits14'),
    backbone_checkpoint=None,
    # 'auto': bf16 on CPUs with native bf16 and on CUDA, else fp32; features are kept fp32
    precision='auto',
    data_preprocessor={{_base_.data_preprocessor}})

test_cfg = dict(
    type='dino_mm.FeatureEvalTestLoop',
    train_dataloader={{_base_.train_feature_dataloader}},
    cache_dir=None)  # e.g. 'features' (under --work-dir) to reuse training features
test_evaluator = dict(type='dino_mm.KNNMetric', ks=(10, 20, 100, 200), temperature=0.07,
                      topk=(1, 5))
custom_hooks = []
# Frozen-feature evaluation has no validation loop (MMEngine wants all three unset).
val_dataloader = None
val_cfg = None
val_evaluator = None
