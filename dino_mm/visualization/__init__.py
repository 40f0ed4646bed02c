# Drawing and the hooks that write pictures (``tools/test.py --show-dir``); keep imports
# light (OpenCV, MMEngine), the model packages import from here.
from .depth import DepthVisualizationHook, colorize_depth

__all__ = ['DepthVisualizationHook', 'colorize_depth']
