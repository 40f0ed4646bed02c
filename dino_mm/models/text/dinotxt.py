"""dino.txt ("DINOv2 Meets Text"): a text tower aligned to a frozen DINO backbone.

:class:`DINOTxt` is an MMEngine model with the official module tree, so the released
files load by name: ``visual_model`` (:class:`~.towers.VisionTower`: the frozen backbone
+ a head of two trainable ViT blocks; image embedding = [class token, mean of the patch
tokens]), ``text_model`` (:class:`~.towers.TextTower`: a causal text transformer pooled at
the end-of-text token and projected), and the learnable ``logit_scale`` (log of the
contrastive temperature's inverse, clamped to [0, ln 100] as in the official loop).

Modes: ``'loss'`` -- the CLIP loss of a batch of images and their ``caption`` metainfo
(gathered over ranks); ``'predict'`` -- zero-shot classification against the text
embeddings of ``zero_shot`` class names x templates (mmpretrain data samples with
``pred_score``, for mmpretrain's ``Accuracy``); ``'tensor'`` -- image embeddings.

As in the official training, a frozen vision backbone is not written to checkpoints (the
heads are a few hundred MB, the backbone up to 27 GB); loading such a checkpoint keeps the
backbone the model was built with, which therefore must come from ``backbone_checkpoint``
(a model whose backbone is still random refuses a checkpoint without one).
"""
import math
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import nn

from dino_mm.registry import MODELS

from ..algorithms.optimization import SSLOptimizationMixin
from ..backbones.utils import build_frozen_backbone
from .tokenizer import CLIPTokenizer
from .towers import HEAD_BLOCK_NAMES, TextTower, VisionTower
from .zero_shot import fill_template, load_class_names, load_templates

__all__ = ['DINOTxt']

_BACKBONE_PREFIX = 'visual_model.backbone.'
IMAGENET_PREPROCESSOR = dict(type='ImgDataPreprocessor', mean=[123.675, 116.28, 103.53],
                             std=[58.395, 57.12, 57.375], bgr_to_rgb=True)


@MODELS.register_module()
class DINOTxt(SSLOptimizationMixin, BaseModel):
    """dino.txt model (official ``DINOTxt`` structure and key names).

    Args:
        vision_backbone (dict | nn.Module): The DINO backbone (config or module).
        text_backbone (dict | nn.Module): The text transformer, e.g.
            ``dict(type='dino_mm.TextTransformer', dim=1280, num_heads=20, num_layers=24)``.
        embed_dim (int): Joint embedding width (2048 in the releases: 1024 for the class
            token + 1024 for the pooled patches of a ViT-L).
        backbone_checkpoint (str, optional): Vision backbone weights, loaded strictly
            (a path, or a file name found like the hub finds official files).
        vision (dict, optional): :class:`~.towers.VisionTower` options
            (``freeze_backbone``, ``num_head_blocks``, ``head_drop_path``,
            ``use_class_token``, ``use_patch_tokens``, ``patch_token_layer``,
            ``patch_pooler``, ``use_linear_projection``); defaults: the releases'.
        text (dict, optional): :class:`~.towers.TextTower` options; defaults: the releases'.
        release (str): 'dinov3' or 'dinov2': the head-block key name of that release.
        tokenizer (dict | CLIPTokenizer, optional): Defaults to the CLIP BPE tokenizer.
        init_logit_scale (float): Defaults to ln(1 / 0.07).
        max_logit_scale (float): Upper clamp of ``logit_scale``. Defaults to ln(100).
        freeze_logit_scale (bool): Defaults to False.
        zero_shot (dict, optional): ``class_names`` (list, file or 'imagenet'),
            ``templates`` (list, file, 'openai_imagenet' or 'simple'), ``part`` ('full',
            'class' or 'patch': which half of the embeddings is compared). Needed by
            ``mode='predict'``.
        save_frozen_backbone (bool): Also write a frozen backbone to checkpoints.
            Defaults to False (official).
        clip_grad (float, optional): Max gradient norm of the vision head and of the text
            tower (each clipped separately); None (official) disables clipping.
        data_preprocessor (dict, optional): Defaults to ImageNet mean/std, BGR to RGB.
        init_cfg (dict, optional): MMEngine init config.
    """

    def __init__(self, vision_backbone: Union[dict, nn.Module], text_backbone: Union[dict, nn.Module],
                 embed_dim: int = 2048, backbone_checkpoint: Optional[str] = None,
                 vision: Optional[dict] = None, text: Optional[dict] = None,
                 release: str = 'dinov3', tokenizer: Union[dict, CLIPTokenizer, None] = None,
                 init_logit_scale: float = math.log(1 / 0.07),
                 max_logit_scale: float = math.log(100), freeze_logit_scale: bool = False,
                 zero_shot: Optional[dict] = None, save_frozen_backbone: bool = False,
                 clip_grad: Optional[float] = None, data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor or dict(IMAGENET_PREPROCESSOR),
                         init_cfg=init_cfg)
        if release not in HEAD_BLOCK_NAMES:
            raise ValueError(f'release must be one of {sorted(HEAD_BLOCK_NAMES)}, got {release!r}')
        vision = dict(vision or {})
        freeze = vision.setdefault('freeze_backbone', True)
        backbone = build_frozen_backbone(vision_backbone, backbone_checkpoint,
                                         source='dinotxt vision backbone')
        if not freeze:
            backbone.requires_grad_(True)
        self.backbone_source = backbone_checkpoint
        text_module = MODELS.build(text_backbone) if isinstance(text_backbone, dict) else text_backbone
        block_names = HEAD_BLOCK_NAMES[release]
        self.visual_model = VisionTower(backbone, embed_dim, block_list_name=block_names, **vision)
        self.text_model = TextTower(text_module, embed_dim, block_list_name=block_names,
                                    **(text or {}))
        self.visual_model.init_weights()
        self.text_model.head.init_weights()
        self.embed_dim = embed_dim
        self.init_logit_scale, self.max_logit_scale = init_logit_scale, max_logit_scale
        self.logit_scale = nn.Parameter(torch.full((1, ), float(init_logit_scale)))
        if freeze_logit_scale:
            self.logit_scale.requires_grad_(False)
        if isinstance(tokenizer, dict):
            tokenizer = CLIPTokenizer(**{k: v for k, v in tokenizer.items() if k != 'type'})
        self.tokenizer = tokenizer or CLIPTokenizer()
        self.zero_shot = dict(zero_shot or {})
        self.save_frozen_backbone = save_frozen_backbone
        self.clip_grad = clip_grad
        self._class_embeddings = None
        self._register_state_dict_hook(DINOTxt._drop_frozen_backbone)
        self._register_load_state_dict_pre_hook(self._keep_frozen_backbone, with_module=False)

    # ---------------------------------------------------------------- checkpoints
    @property
    def context_length(self) -> int:
        return int(getattr(self.text_model.backbone, 'context_length', 77))

    def init_weights(self) -> None:
        """Re-initialise the trainable parts (the frozen backbone keeps its weights)."""
        self.visual_model.init_weights()
        self.text_model.init_weights()
        with torch.no_grad():
            self.logit_scale.fill_(self.init_logit_scale)

    @staticmethod
    def _drop_frozen_backbone(module: 'DINOTxt', state_dict: dict, prefix: str, local_metadata):
        if module.visual_model.freeze_backbone and not module.save_frozen_backbone:
            for key in [k for k in state_dict if k.startswith(prefix + _BACKBONE_PREFIX)]:
                del state_dict[key]
        return state_dict

    def _keep_frozen_backbone(self, state_dict: dict, prefix: str, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs) -> None:
        """Fill a heads-only checkpoint's backbone entries with the current weights."""
        full = prefix + _BACKBONE_PREFIX
        if any(k.startswith(full) for k in state_dict):
            return
        if not any(k.startswith(prefix + 'visual_model.head.') for k in state_dict):
            return  # not a dino.txt state dict at all: let the strict check report it
        if self.backbone_source is None:
            raise ValueError(
                'this dino.txt checkpoint holds the heads only (the frozen vision backbone is '
                'never saved), and the model\'s vision backbone is still random: set the '
                'DINOTxt\'s backbone_checkpoint (model.backbone_checkpoint, or '
                'model.dinotxt.backbone_checkpoint in a zero-shot segmentation config; the '
                'hub\'s backbone_weights=) to the backbone file the heads were trained on')
        for key, value in self.visual_model.backbone.state_dict().items():
            state_dict[full + key] = value

    def mark_backbone_loaded(self, source: str) -> None:
        """Record that the vision backbone's weights were loaded from ``source``."""
        self.backbone_source = source

    # ---------------------------------------------------------------- encoders
    def tokenize(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        device = self.logit_scale.device
        return self.tokenizer.tokenize(texts, context_length=self.context_length).to(device)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, embed_dim) embeddings."""
        features = self.visual_model(images)[0]
        return F.normalize(features, dim=-1) if normalize else features

    def encode_image_with_patch_tokens(self, images: torch.Tensor, normalize: bool = False):
        """(embedding, head patch tokens, backbone patch tokens), as the official method."""
        features, patches, backbone_patches = self.visual_model(images)
        return (F.normalize(features, dim=-1) if normalize else features), patches, backbone_patches

    def encode_text(self, text: Union[torch.Tensor, str, Sequence[str]],
                    normalize: bool = False) -> torch.Tensor:
        """Token ids (B, N) -- or strings, tokenised here -- -> (B, embed_dim)."""
        if not isinstance(text, torch.Tensor):
            text = self.tokenize(text)
        features = self.text_model(text)
        return F.normalize(features, dim=-1) if normalize else features

    def get_logits(self, images: torch.Tensor, text: torch.Tensor):
        """(image -> text logits, text -> image logits), scaled by ``exp(logit_scale)``."""
        image_logits = (self.logit_scale.exp() * self.encode_image(images, True)
                        @ self.encode_text(text, True).t())
        return image_logits, image_logits.t()

    # ---------------------------------------------------------------- zero-shot
    @staticmethod
    def embedding_part(features: torch.Tensor, part: str) -> torch.Tensor:
        """'full', 'class' (first half) or 'patch' (second half: pooled patches)."""
        if part == 'full':
            return features
        half = features.shape[-1] // 2
        if part == 'class':
            return features[..., :half]
        if part == 'patch':
            return features[..., half:]
        raise ValueError(f"embedding part must be 'full', 'class' or 'patch', got {part!r}")

    @torch.no_grad()
    def class_text_embeddings(self, class_names, templates='openai_imagenet', part: str = 'full',
                              batch_size: int = 256) -> torch.Tensor:
        """(C, D) zero-shot classifier: per class, the renormalised mean of its normalised
        prompt embeddings (CLIP's prompt ensembling, as the official notebooks)."""
        names, temps = load_class_names(class_names), load_templates(templates)
        prompts = [fill_template(t, n) for n in names for t in temps]
        feats = torch.cat([
            self.embedding_part(self.encode_text(prompts[i:i + batch_size]), part)
            for i in range(0, len(prompts), batch_size)])
        feats = F.normalize(feats, dim=-1).view(len(names), len(temps), -1).mean(dim=1)
        return F.normalize(feats, dim=-1)

    def train(self, mode: bool = True) -> 'DINOTxt':
        self._class_embeddings = None  # weights may change: recompute at the next eval
        return super().train(mode)

    def _zero_shot_classifier(self) -> torch.Tensor:
        if self._class_embeddings is None:
            if not self.zero_shot.get('class_names'):
                raise ValueError("mode='predict' is zero-shot classification: set "
                                 "model.zero_shot=dict(class_names=<list | file | 'imagenet'>, "
                                 "templates=...)")
            self._class_embeddings = self.class_text_embeddings(
                self.zero_shot['class_names'], self.zero_shot.get('templates', 'openai_imagenet'),
                self.zero_shot.get('part', 'full'))
        return self._class_embeddings

    # ---------------------------------------------------------------- MMEngine
    def captions_of(self, data_samples) -> List[str]:
        if not data_samples:
            raise ValueError("dino.txt training needs data samples carrying a 'caption'")
        captions = []
        for i, sample in enumerate(data_samples):
            caption = sample.get('caption') if hasattr(sample, 'get') else None
            if not isinstance(caption, str) or not caption.strip():
                where = sample.get('img_path', f'sample {i}') if hasattr(sample, 'get') else i
                raise ValueError(f'no caption for {where}: dino.txt pairs each image with a '
                                 "non-empty 'caption' (PackInputs(meta_keys=(..., 'caption')))")
            captions.append(caption)
        return captions

    def loss(self, inputs: torch.Tensor, data_samples) -> Dict[str, torch.Tensor]:
        from dino_mm.models.losses.clip_loss import clip_loss
        tokens = self.tokenize(self.captions_of(data_samples))
        with torch.no_grad():  # the official loop clamps after each step: same values
            self.logit_scale.clamp_(0, self.max_logit_scale)
        image = self.encode_image(inputs, normalize=True)
        text = self.encode_text(tokens, normalize=True)
        scale = self.logit_scale.exp()
        return dict(loss_clip=clip_loss(image, text, scale), logit_scale=scale.detach().squeeze())

    def predict(self, inputs: torch.Tensor, data_samples=None):
        from mmpretrain.structures import DataSample
        part = self.zero_shot.get('part', 'full')
        image = F.normalize(self.embedding_part(self.encode_image(inputs), part), dim=-1)
        scores = (self.logit_scale.exp() * image @ self._zero_shot_classifier().t()).softmax(-1)
        data_samples = data_samples or [DataSample() for _ in range(inputs.shape[0])]
        for sample, score in zip(data_samples, scores):
            sample.set_pred_score(score).set_pred_label(score.argmax(keepdim=True))
        return data_samples

    def forward(self, inputs: torch.Tensor, data_samples=None, mode: str = 'tensor'):
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self.encode_image(inputs, normalize=True)
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def fsdp_units(self) -> List[tuple]:
        """The FSDP2 units :class:`dino_mm.DINOFSDPStrategy` shards, inner units first.

        Every block of the text transformer and of the text and vision heads, then
        ``text_model`` and ``visual_model.head`` as the roots of the remaining trainable
        weights (the trained units of the official ``ac_comp_parallelize``). A trainable
        vision backbone (``freeze_backbone=False``) adds its blocks and itself. Not listed,
        hence left replicated by the strategy: a frozen vision backbone (the official code
        shards it too; replicated, it needs no all-gather per forward, and its weights come
        from ``backbone_checkpoint`` or the build) and ``logit_scale``, whose gradient the
        strategy averages over ranks -- sharded, the in-place clamp of :meth:`loss` would
        only reach FSDP2's gathered copy, not the stored weight.

        Returns:
            list[tuple[str, nn.Module]]: ``(name in named_modules(), module)`` pairs.
        """
        def blocks(module: nn.Module) -> List[nn.Module]:
            flat = getattr(module, '_flat_blocks', None)  # chunked DINO backbones
            found = list(flat()) if callable(flat) else list(getattr(module, 'blocks', []))
            return [b for b in found if not isinstance(b, nn.Identity)]

        vision, text = self.visual_model, self.text_model
        inner, roots = [], []
        if not vision.freeze_backbone:
            inner += blocks(vision.backbone)
            roots.append(vision.backbone)
        inner += blocks(text.backbone) + [b for b in getattr(text.head, text.head.block_list_name)
                                          if not isinstance(b, nn.Identity)]
        inner += [b for b in vision.head.blocks_list if not isinstance(b, nn.Identity)]
        roots += [text, vision.head]
        names = {id(m): n for n, m in self.named_modules()}
        return [(names[id(m)], m) for m in inner + roots]

    def clip_gradients(self, optim_wrapper) -> Dict[str, torch.Tensor]:
        """Clip the vision head and the text tower separately (off by default, as the
        official dino.txt loop)."""
        if not self.clip_grad:
            return {}
        from ..algorithms.optimization import clip_grad_per_module, unscale_amp_grads
        unscale_amp_grads(optim_wrapper)
        return clip_grad_per_module([('vision_head', self.visual_model.head),
                                     ('text', self.text_model)], self.clip_grad)
