"""The official DINOv3 COCO detector (Plain-DETR, hub ``dinov3_vit7b16_de``): inference
with the released weights and training with the hybrid-matching loss."""
from .criterion import DeltaL1Cost, PlainDETRCriterion
from .detector import COCO_CATEGORY_IDS, PlainDETR
from .postprocess import PlainDETRPostProcess

__all__ = ['PlainDETR', 'PlainDETRCriterion', 'DeltaL1Cost', 'PlainDETRPostProcess',
           'COCO_CATEGORY_IDS']
