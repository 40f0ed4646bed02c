"""The official DINOv3 COCO detector (Plain-DETR, hub ``dinov3_vit7b16_de``), inference."""
from .detector import COCO_CATEGORY_IDS, PlainDETR
from .postprocess import PlainDETRPostProcess

__all__ = ['PlainDETR', 'PlainDETRPostProcess', 'COCO_CATEGORY_IDS']
