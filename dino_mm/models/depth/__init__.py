"""Monocular depth: estimator, flip TTA, linear-bins and DPT heads, losses, visualisation.

Imports mmseg (and mmcv.ops through it); not imported by ``import dino_mm`` but through the
registry ``locations`` and :func:`dino_mm.utils.register_all_modules`.
"""
from .decode_head import DepthBaseDecodeHead
from .depth_estimator import DepthDataPreProcessor, DinoDepthEstimator
from .depth_tta import DepthTTAModel
from .dpt_head import DepthOutputBlock, DPTDepthHead
from .linear_head import LinearDepthHead
from .losses import GradientLoss, SigLoss
from dino_mm.visualization.depth import DepthVisualizationHook, colorize_depth

__all__ = [
    'DepthBaseDecodeHead', 'DepthDataPreProcessor', 'DinoDepthEstimator', 'DepthTTAModel',
    'DepthOutputBlock', 'DPTDepthHead', 'LinearDepthHead', 'GradientLoss',
    'SigLoss', 'DepthVisualizationHook', 'colorize_depth'
]
