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

# Models: backbones, heads, losses, algorithms, and the dense-task glue (which imports
# mmseg / mmdet, so it is only pulled in when a registry lookup needs it).
_MODEL_LOCATIONS = [
    'dino_mm.models', 'dino_mm.models.segmentation', 'dino_mm.models.depth',
    'dino_mm.models.detection'
]

RUNNERS = Registry('runner', parent=MMENGINE_RUNNERS, scope='dino_mm',
                   locations=['dino_mm.engine'])
RUNNER_CONSTRUCTORS = Registry('runner constructor', parent=MMENGINE_RUNNER_CONSTRUCTORS,
                               scope='dino_mm', locations=['dino_mm.engine'])
LOOPS = Registry('loop', parent=MMENGINE_LOOPS, scope='dino_mm',
                 locations=['dino_mm.engine', 'dino_mm.evaluation'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='dino_mm',
                 locations=['dino_mm.engine'])
STRATEGIES = Registry('strategy', parent=MMENGINE_STRATEGIES, scope='dino_mm',
                      locations=['dino_mm.engine'])
LOG_PROCESSORS = Registry('log processor', parent=MMENGINE_LOG_PROCESSORS,
                          scope='dino_mm', locations=['dino_mm.engine'])

# Dense-task datasets import mmseg / mmdet, so they are only imported on lookup.
_DATASET_LOCATIONS = [
    'dino_mm.datasets', 'dino_mm.datasets.depth', 'dino_mm.datasets.segmentation',
    'dino_mm.datasets.detection'
]
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='dino_mm',
                    locations=_DATASET_LOCATIONS)
DATA_SAMPLERS = Registry('data sampler', parent=MMENGINE_DATA_SAMPLERS, scope='dino_mm',
                         locations=['dino_mm.datasets'])
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope='dino_mm',
                      locations=['dino_mm.datasets.transforms'] + _DATASET_LOCATIONS[1:])
FUNCTIONS = Registry('function', parent=MMENGINE_FUNCTIONS, scope='dino_mm',
                     locations=['dino_mm.datasets'])

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='dino_mm',
                  locations=_MODEL_LOCATIONS)
MODEL_WRAPPERS = Registry('model_wrapper', parent=MMENGINE_MODEL_WRAPPERS,
                          scope='dino_mm', locations=['dino_mm.engine'])
WEIGHT_INITIALIZERS = Registry('weight initializer', parent=MMENGINE_WEIGHT_INITIALIZERS,
                               scope='dino_mm', locations=['dino_mm.models'])
TASK_UTILS = Registry('task util', parent=MMENGINE_TASK_UTILS, scope='dino_mm',
                      locations=_MODEL_LOCATIONS)

OPTIMIZERS = Registry('optimizer', parent=MMENGINE_OPTIMIZERS, scope='dino_mm',
                      locations=['dino_mm.engine'])
OPTIM_WRAPPERS = Registry('optim_wrapper', parent=MMENGINE_OPTIM_WRAPPERS,
                          scope='dino_mm', locations=['dino_mm.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry('optimizer wrapper constructor',
                                      parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
                                      scope='dino_mm', locations=['dino_mm.engine'])
PARAM_SCHEDULERS = Registry('parameter scheduler', parent=MMENGINE_PARAM_SCHEDULERS,
                            scope='dino_mm', locations=['dino_mm.engine'])

METRICS = Registry('metric', parent=MMENGINE_METRICS, scope='dino_mm',
                   locations=['dino_mm.evaluation'])
EVALUATOR = Registry('evaluator', parent=MMENGINE_EVALUATOR, scope='dino_mm',
                     locations=['dino_mm.evaluation'])

VISUALIZERS = Registry('visualizer', parent=MMENGINE_VISUALIZERS, scope='dino_mm',
                       locations=['dino_mm.visualization'])
VISBACKENDS = Registry('vis_backend', parent=MMENGINE_VISBACKENDS, scope='dino_mm',
                       locations=['dino_mm.visualization'])
INFERENCERS = Registry('inferencer', parent=MMENGINE_INFERENCERS, scope='dino_mm',
                       locations=['dino_mm.apis'])
