from .canopy_metric import CanopyHeightMetric, block_means
from .depth_metric import DepthMetric, compute_depth_metrics, depth_eval_mask
from .dump_predictions import DumpPredictions
from .feature_extraction import (extract_features, load_cached_features,
                                 parse_data_samples, save_cached_features)
from .knn import KNNMetric, knn_class_scores, knn_evaluate, knn_topk
from .linear_probe import (OFFICIAL_LEARNING_RATES, LinearClassifier, LinearProbeGrid,
                           LinearProbeMetric, LinearProbeOptimWrapperConstructor,
                           classifier_name)
from .log_regression import (OFFICIAL_C_GRID, LogisticRegressionMetric,
                             eval_log_regression, fit_logistic_regression)
from .loops import FeatureEvalTestLoop, FrozenFeatureModel
from .metrics import TrainFeatureMetric, accuracy_topk

__all__ = [
    'CanopyHeightMetric', 'block_means', 'DepthMetric', 'compute_depth_metrics',
    'depth_eval_mask', 'DumpPredictions',
    'extract_features', 'load_cached_features', 'save_cached_features',
    'parse_data_samples', 'KNNMetric', 'knn_class_scores', 'knn_evaluate', 'knn_topk',
    'OFFICIAL_LEARNING_RATES', 'LinearClassifier', 'LinearProbeGrid', 'LinearProbeMetric',
    'LinearProbeOptimWrapperConstructor', 'classifier_name', 'OFFICIAL_C_GRID',
    'LogisticRegressionMetric', 'eval_log_regression', 'fit_logistic_regression',
    'FeatureEvalTestLoop', 'FrozenFeatureModel', 'TrainFeatureMetric', 'accuracy_topk'
]
