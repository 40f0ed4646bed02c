"""dino.txt: text alignment of frozen DINO backbones (towers, tokenizer, zero-shot)."""
from .dinotxt import DINOTxt
from .text_transformer import CausalSelfAttentionBlock, TextTransformer
from .tokenizer import CLIPTokenizer
from .towers import TextHead, TextTower, VisionHead, VisionTower
from .zero_shot import load_class_names, load_templates

__all__ = [
    'DINOTxt', 'TextTransformer', 'CausalSelfAttentionBlock', 'CLIPTokenizer', 'TextHead',
    'TextTower', 'VisionHead', 'VisionTower', 'load_class_names', 'load_templates'
]
