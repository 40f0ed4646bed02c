"""Child registries of MMEngine's root registries, scope ``dino_mm``.

Every registry knows the modules (``locations``) that fill it, so a config can say
``type='dino_mm.DinoVisionTransformer'`` without importing anything first, while
``mmseg.X``, ``mmdet.X`` and ``mmpretrain.X`` stay reachable from the same config
through MMEngine's registry tree.
"""
from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import EVALUATOR as MMENGINE_EVALUATOR
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import INFERENCERS as MMENGINE_INFERENCERS
from mmengine.registry import LOG_PROCESSORS as MMENGINE_LOG_PROCESSORS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import \
    OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import \
    RUNNER_CONSTRUCTORS as MMENGINE_RUNNER_CONSTRUCTORS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import STRATEGIES as MMENGINE_STRATEGIES
from mmengine.registry import TASK_UTILS as MMENGINE_TASK_UTILS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import \
    WEIGHT_INITIALIZERS as MMENGINE_WEIGHT_INITIALIZERS
from mmengine.registry import Registry

from dino_mm.utils.scope import prefix_scope


def _with_prefix_scope(build):
    """Build ``type='mmseg.X'`` (mmdet, mmpretrain) dicts in that package's scope."""

    def build_func(cfg, registry, default_args=None):
        scope = prefix_scope(cfg)
        if scope is not None:
            cfg = cfg.copy()
            cfg['_scope_'] = scope
        return build(cfg, registry, default_args)

    return build_func



# Models: backbones, heads, losses, algorithms, and the dense-task glue (which imports
# mmseg / mmdet, so it is only pulled in when a registry lookup needs it).
_MODEL_LOCATIONS = [
    'dino_mm.models', 'dino_mm.models.segmentation', 'dino_mm.models.depth',
    'dino_mm.models.detection', 'dino_mm.models.text.zero_shot_seg'
]

def _child(name: str, parent: Registry, locations: list) -> Registry:
    """A child of an MMEngine root registry in the ``dino_mm`` scope."""
    return Registry(name, parent=parent, scope='dino_mm', locations=locations,
                    build_func=_with_prefix_scope(parent.build_func))


RUNNERS = _child('runner', MMENGINE_RUNNERS, ['dino_mm.engine'])
RUNNER_CONSTRUCTORS = _child('runner constructor', MMENGINE_RUNNER_CONSTRUCTORS, ['dino_mm.engine'])
LOOPS = _child('loop', MMENGINE_LOOPS, ['dino_mm.engine', 'dino_mm.evaluation'])
HOOKS = _child('hook', MMENGINE_HOOKS, ['dino_mm.engine', 'dino_mm.visualization'])
STRATEGIES = _child('strategy', MMENGINE_STRATEGIES, ['dino_mm.engine'])
LOG_PROCESSORS = _child('log processor', MMENGINE_LOG_PROCESSORS, ['dino_mm.engine'])

# Dense-task datasets import mmseg / mmdet, so they are only imported on lookup.
_DATASET_LOCATIONS = [
    'dino_mm.datasets', 'dino_mm.datasets.depth', 'dino_mm.datasets.segmentation',
    'dino_mm.datasets.detection'
]
DATASETS = _child('dataset', MMENGINE_DATASETS, _DATASET_LOCATIONS)
DATA_SAMPLERS = _child('data sampler', MMENGINE_DATA_SAMPLERS, ['dino_mm.datasets'])
TRANSFORMS = _child('transform', MMENGINE_TRANSFORMS, ['dino_mm.datasets.transforms'] + _DATASET_LOCATIONS[1:])
FUNCTIONS = _child('function', MMENGINE_FUNCTIONS, ['dino_mm.datasets'])

MODELS = _child('model', MMENGINE_MODELS, _MODEL_LOCATIONS)
MODEL_WRAPPERS = _child('model_wrapper', MMENGINE_MODEL_WRAPPERS, ['dino_mm.engine'])
WEIGHT_INITIALIZERS = _child('weight initializer', MMENGINE_WEIGHT_INITIALIZERS, ['dino_mm.models'])
TASK_UTILS = _child('task util', MMENGINE_TASK_UTILS, _MODEL_LOCATIONS)

OPTIMIZERS = _child('optimizer', MMENGINE_OPTIMIZERS, ['dino_mm.engine'])
OPTIM_WRAPPERS = _child('optim_wrapper', MMENGINE_OPTIM_WRAPPERS, ['dino_mm.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = _child('optimizer wrapper constructor', MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS, ['dino_mm.engine'])
PARAM_SCHEDULERS = _child('parameter scheduler', MMENGINE_PARAM_SCHEDULERS, ['dino_mm.engine'])

METRICS = _child('metric', MMENGINE_METRICS, ['dino_mm.evaluation'])
EVALUATOR = _child('evaluator', MMENGINE_EVALUATOR, ['dino_mm.evaluation'])

VISUALIZERS = _child('visualizer', MMENGINE_VISUALIZERS, ['dino_mm.visualization'])
VISBACKENDS = _child('vis_backend', MMENGINE_VISBACKENDS, ['dino_mm.visualization'])
INFERENCERS = _child('inferencer', MMENGINE_INFERENCERS, ['dino_mm.apis'])
