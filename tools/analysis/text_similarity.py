"""Cosine-similarity maps of dino.txt patch tokens with text prompts.

Every head patch token of the image (the dino.txt vision tower's, L2-normalised) is
compared with the patch half of each prompt's text embedding -- the half dino.txt aligns
with pooled patches, which the official zero-shot segmentation uses too. One PNG is
written: the image, then per prompt its similarity map upsampled to the image (viridis;
per prompt min-max scaled unless ``--scale shared``) under the prompt as a title.

Examples::

    python tools/analysis/text_similarity.py \\
        configs/dinotxt/dinov3-vitl16_dinotxt-tet1280d20h24l_zeroshot_in1k.py \\
        dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth \\
        --image cat.jpg --text "a cat" --text "grass" --out work_dirs/cat_text.png
    python tools/analysis/text_similarity.py dinov3_vitl16_dinotxt_tet1280d20h24l \\
        dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth \\
        --backbone-weights dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth \\
        --image cat.jpg --text "a cat" --out cat_text.png

CONFIG_OR_HUB_NAME is a config whose ``model`` is a ``dino_mm.DINOTxt`` (or a zero-shot
segmentor holding one as ``model.dinotxt``), or a dino.txt hub entry name. CHECKPOINT is
the dino.txt heads file (released, or a dino.txt training checkpoint), or ``none`` for
random heads.
"""
import argparse
import logging
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dino_mm.apis import (heatmap, load_image, patch_grid_size, save_png, side_by_side,
                          to_tensor, upsample_map)

TITLE_HEIGHT = 16  # pixels of the white strip holding each panel's title


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('model', metavar='CONFIG_OR_HUB_NAME',
                        help='config file of a dino.txt model, or a hub entry name such as '
                        'dinov3_vitl16_dinotxt_tet1280d20h24l')
    parser.add_argument('checkpoint', metavar='CHECKPOINT',
                        help="dino.txt heads file (vision head + text tower), or 'none'")
    parser.add_argument('--image', required=True, help='image file')
    parser.add_argument('--text', action='append', default=[], metavar='PROMPT',
                        help='a text prompt; repeat for several (one map each)')
    parser.add_argument('--out', required=True, help='output PNG')
    parser.add_argument('--backbone-weights', default=None,
                        help='frozen vision backbone file (hub entries; for a config it '
                        'replaces model.backbone_checkpoint)')
    parser.add_argument('--text-weights', default=None,
                        help='text-encoder file of the DINOv2 hub entry (its heads come in '
                        'two files; CHECKPOINT is then the vision head)')
    parser.add_argument('--templates', default=None,
                        help="prompt templates ('openai_imagenet', 'simple', or a file): "
                        'each prompt is then a class name, ensembled over the templates as '
                        'zero-shot segmentation does; default: the prompt as it is')
    parser.add_argument('--size', type=int, default=512,
                        help='shorter image side in pixels before rounding down to whole '
                        'patches (default: %(default)s, the zero-shot segmentation scale)')
    parser.add_argument('--scale', choices=['per-prompt', 'shared'], default='per-prompt',
                        help='colour range: each map its own min-max, or one range for all')
    parser.add_argument('--device', default='cpu', help='torch device (default: cpu)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='override entries of a config, e.g. model.release=dinov2')
    args = parser.parse_args(argv)
    args.text = [t for t in args.text if t.strip()]
    if not args.text:
        parser.error('give at least one non-empty --text PROMPT (repeat --text for several)')
    return args


# ---------------------------------------------------------------------------- model
def _dinotxt_cfg(path: str, cfg_options, backbone_weights: Optional[str]):
    from mmengine.config import Config
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    model = cfg.get('model')
    if isinstance(model, dict) and isinstance(model.get('dinotxt'), dict):
        model = model['dinotxt']  # a zero-shot segmentation config
    if not isinstance(model, dict) or not str(model.get('type', '')).endswith('DINOTxt'):
        kind = model.get('type') if isinstance(model, dict) else type(model).__name__
        raise SystemExit(f'{path}: model is {kind!r}, not a dino_mm.DINOTxt (nor a zero-shot '
                         'segmentor with model.dinotxt); give a configs/dinotxt/ config')
    if backbone_weights is not None:
        model['backbone_checkpoint'] = backbone_weights
    return model


def build_dinotxt(model: str, checkpoint: str, backbone_weights: Optional[str] = None,
                  text_weights: Optional[str] = None, cfg_options=None):
    """A DINOTxt in eval mode from a config or a hub entry name, with ``checkpoint``."""
    from mmengine.logging import print_log
    from mmengine.registry import DefaultScope

    from dino_mm.hub import dinotxt as hub
    random_heads = checkpoint.lower() == 'none'
    if random_heads:
        print_log('CHECKPOINT none: the dino.txt heads are random, so the maps are noise',
                  logger='current', level=logging.WARNING)
    elif not osp.isfile(checkpoint):
        raise SystemExit(f'checkpoint file not found: {checkpoint!r} (the dino.txt heads; '
                         "'none' for random heads)")
    if model.endswith('.py') or osp.isfile(model):
        if not osp.isfile(model):
            raise SystemExit(f'config file not found: {model!r}')
        from dino_mm.registry import MODELS
        with DefaultScope.overwrite_default_scope('dino_mm'):
            net = MODELS.build(_dinotxt_cfg(model, cfg_options, backbone_weights))
        if not random_heads:
            hub.load_dinotxt_weights(net, checkpoint)
        return net.eval()
    if model not in hub.DINOTXT_WEIGHTS:
        raise SystemExit(f'unknown dino.txt hub entry {model!r}: expected a config file (.py) '
                         f'or one of {sorted(hub.DINOTXT_WEIGHTS)}')
    kwargs = dict(backbone_weights=backbone_weights)
    if text_weights is not None:
        kwargs['text_weights'] = text_weights
    if random_heads:  # explicit files (--backbone-weights) still load with pretrained=False
        kwargs['pretrained'] = False
    else:
        kwargs.update(weights=checkpoint, pretrained=True)
    net, _ = getattr(hub, model)(**kwargs)
    return net.eval()


# ---------------------------------------------------------------------------- maps
@torch.no_grad()
def similarity_maps(model, images: torch.Tensor, prompts: Sequence[str],
                    templates=None) -> torch.Tensor:
    """(P, h, w) cosines of the head patch tokens of one image with each prompt.

    Args:
        model (DINOTxt): The model.
        images (Tensor): (1, 3, H, W) normalised image, H and W whole patches.
        prompts (Sequence[str]): Texts (class names when ``templates`` is given).
        templates: None (each prompt as it is) or a template spec of
            :func:`~dino_mm.models.text.load_templates`.

    Returns:
        Tensor: float32 (P, H / patch, W / patch).
    """
    p = model.visual_model.backbone.patch_size
    p = int(p[0] if isinstance(p, (tuple, list)) else p)
    h, w = images.shape[2] // p, images.shape[3] // p
    _, patches, _ = model.visual_model.class_and_patch_tokens(images)
    patches = F.normalize(patches[0].float(), dim=-1).reshape(h, w, -1)
    if templates is None:
        text = model.embedding_part(model.encode_text(list(prompts)), 'patch')
        text = F.normalize(text.float(), dim=-1)
    else:
        text = model.class_text_embeddings(list(prompts), templates, part='patch').float()
    return torch.einsum('pd,hwd->phw', text, patches)


def _titled(panel: np.ndarray, title: str) -> np.ndarray:
    """``panel`` under a white strip with ``title`` (shortened with '...' to fit)."""
    from PIL import Image, ImageDraw, ImageFont
    width = panel.shape[1]
    strip = Image.new('RGB', (width, TITLE_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    text = title
    while text and draw.textlength(text, font=font) > width - 4:
        text = text[:-1]
    if text != title:
        text = text[:-3].rstrip() + '...' if len(text) > 3 else ''
    draw.text((2, 2), text, fill=(0, 0, 0), font=font)
    return np.concatenate([np.asarray(strip), panel], axis=0)


def render(image: np.ndarray, maps: np.ndarray, prompts: Sequence[str],
           scale: str = 'per-prompt') -> np.ndarray:
    """The picture: the image, then one colour-mapped similarity map per prompt."""
    height, width = image.shape[:2]
    lo, hi = float(maps.min()), float(maps.max())
    panels = [_titled(image, 'image')]
    for prompt, sim in zip(prompts, maps):
        if scale == 'per-prompt':
            lo, hi = float(sim.min()), float(sim.max())
        unit = (sim - lo) / (hi - lo) if hi > lo else np.zeros_like(sim)
        panels.append(_titled(heatmap(upsample_map(unit, height, width)), prompt))
    return side_by_side(panels)


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    args = parse_args(argv)
    if not osp.isfile(args.image):
        raise SystemExit(f'image file not found: {args.image!r}')
    image = load_image(args.image)
    model = build_dinotxt(args.model, args.checkpoint, args.backbone_weights, args.text_weights,
                          args.cfg_options).to(args.device)
    p = model.visual_model.backbone.patch_size
    p = int(p[0] if isinstance(p, (tuple, list)) else p)
    grid = patch_grid_size(image.shape[0], image.shape[1], args.size, p, args.image)
    x = to_tensor(image, grid, p)[None].to(args.device)
    maps = similarity_maps(model, x, args.text, args.templates).cpu().numpy()
    out = save_png(render(image, maps, args.text, args.scale), args.out)
    ranges = ', '.join(f'{t!r}: [{m.min():.3f}, {m.max():.3f}]' for t, m in zip(args.text, maps))
    print(f'cosine ranges {ranges}; wrote {out}')
    return dict(out=out, maps=maps, prompts=list(args.text))


if __name__ == '__main__':
    main(sys.argv[1:])
