# Core models: importing this registers backbones, layers, heads, losses and algorithms.
# The dense-task glue (segmentation / depth / detection) imports mmseg / mmdet and is
# registered lazily through the registry ``locations`` (or dino_mm.utils.register_all_modules).
from .algorithms import *  # noqa: F401,F403
from .backbones import *  # noqa: F401,F403
from .heads import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .text import *  # noqa: F401,F403
