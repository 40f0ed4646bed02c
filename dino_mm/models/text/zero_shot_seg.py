"""Zero-shot semantic segmentation with dino.txt, as the official DINOv3 notebook
(``notebooks/dinotxt_segmentation_inference.ipynb``), wrapped as an mmseg segmentor.

Per class, the text features are the prompt-ensembled *patch half* of the dino.txt text
embeddings (each of the templates encoded, the second half kept, L2-normalised, averaged,
normalised again). Per image, the head patch tokens of the vision tower are L2-normalised
and compared with them (cosine), giving one (C, h, w) map per image or window:

* ``mode='whole'``: the image is stretched (bicubic) to the next multiple of the patch
  size and the low-resolution cosines are resized (bilinear) straight to the label size;
* ``mode='slide'`` (the notebook's default): per window, the cosines are upsampled
  (bilinear) to the window, soft-maxed over the classes, accumulated and divided by the
  window counts (:func:`~dino_mm.models.sliding_window.slide_average`), then resized to
  the label size.

The argmax over classes is the prediction; mmseg's ``IoUMetric`` scores it. Nothing is
trained here: the dino.txt weights come from a checkpoint (the heads, as written by
dino.txt training or released) plus ``dinotxt.backbone_checkpoint`` (the frozen backbone).
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.registry import DefaultScope
from mmseg.models.segmentors import BaseSegmentor
from mmseg.structures import SegDataSample
from torch import Tensor, nn

from dino_mm.registry import MODELS
from dino_mm.utils.scope import builds_in_scope
from ..sliding_window import slide_average
from .zero_shot import load_class_names, load_templates

__all__ = ['DINOTxtZeroShotSegmentor', 'SEG_IMAGENET_PREPROCESSOR']

# mmseg pre-processor with the ImageNet statistics (0-255 scale) of the official notebook.
SEG_IMAGENET_PREPROCESSOR = dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                                 std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                                 seg_pad_val=255)
# Top-level names of a dino.txt state dict (released files, dino.txt training checkpoints).
_DINOTXT_KEYS = ('visual_model', 'text_model', 'logit_scale')


@MODELS.register_module()
@builds_in_scope('mmseg')  # the pre-processor is an mmseg module named without a prefix
class DINOTxtZeroShotSegmentor(BaseSegmentor):
    """Zero-shot semantic segmentor on a :class:`~dino_mm.models.text.DINOTxt`.

    Args:
        dinotxt (dict | nn.Module): The dino.txt model (config of a ``dino_mm.DINOTxt``
            or a module).
        class_names (list[str] | str): The dataset's class names in label order, or a text
            file with one per line. Required: a model never sees the dataset's
            ``METAINFO``, and the order decides which label each text embedding predicts.
        templates (list[str] | str): Prompt templates ('openai_imagenet': OpenAI's 80
            ImageNet templates, as the notebook; 'simple'; a list or a file).
        mode (str): 'slide' (notebook default) or 'whole'.
        crop_size (tuple[int, int]): Sliding window (h, w). Defaults to (384, 384).
        stride (tuple[int, int]): Window step (h, w). Defaults to (192, 192).
        data_preprocessor (dict, optional): Defaults to mmseg's ``SegDataPreProcessor``
            with the ImageNet mean / std and BGR to RGB.
        init_cfg (dict, optional): MMEngine init config.
    """

    MODES = ('slide', 'whole')

    def __init__(self, dinotxt: Union[dict, nn.Module],
                 class_names: Union[Sequence[str], str, None] = None,
                 templates: Union[Sequence[str], str] = 'openai_imagenet', mode: str = 'slide',
                 crop_size: Sequence[int] = (384, 384), stride: Sequence[int] = (192, 192),
                 data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor or dict(SEG_IMAGENET_PREPROCESSOR),
                         init_cfg=init_cfg)
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if class_names is None:
            raise ValueError(
                'DINOTxtZeroShotSegmentor needs class_names: the dataset\'s class names in label '
                'order (a list, or a text file with one name per line); the model does not see '
                "the dataset's METAINFO")
        # Validated now (missing file, empty / duplicated names, template without '{}'), so a
        # config error shows before any image is read.
        self.class_names = load_class_names(class_names)
        if len(self.class_names) < 2:
            raise ValueError(f'zero-shot segmentation picks one of the classes per pixel: give at least '
                             f'two class names, got {self.class_names}')
        load_templates(templates)
        self.templates = templates
        self.mode = mode
        self.crop_size, self.stride = _pair(crop_size, 'crop_size'), _pair(stride, 'stride')
        if isinstance(dinotxt, dict):
            # dino.txt parts are dino_mm modules with bare-name sub-configs (its tokenizer,
            # its ImgDataPreprocessor): build them in dino_mm's scope, not mmseg's.
            with DefaultScope.overwrite_default_scope('dino_mm'):
                dinotxt = MODELS.build(dinotxt)
        self.dinotxt = dinotxt
        self.num_classes = self.out_channels = len(self.class_names)
        self.align_corners = False  # the notebook's bilinear resizes; read by postprocess_result
        self._text_features: Optional[Tensor] = None
        self._register_state_dict_hook(DINOTxtZeroShotSegmentor._as_dinotxt_state_dict)
        self._register_load_state_dict_pre_hook(self._adopt_dinotxt_state_dict, with_module=False)

    # ---------------------------------------------------------------- checkpoints
    @staticmethod
    def _as_dinotxt_state_dict(module: 'DINOTxtZeroShotSegmentor', state_dict: dict, prefix: str,
                               local_metadata) -> dict:
        """The state dict is the dino.txt model's, under its own names (``visual_model.*``,
        ``text_model.*``, ``logit_scale``; the frozen backbone left out as DINOTxt does).

        dino.txt checkpoints (released, or written by dino.txt training) then match this
        model name for name, which is what dino_mm's checkpoint check before a test run
        compares; :meth:`_adopt_dinotxt_state_dict` maps them back when loading.
        """
        own = prefix + 'dinotxt.'
        for key in [k for k in state_dict if k.startswith(own)]:
            state_dict[prefix + key[len(own):]] = state_dict.pop(key)
        return state_dict

    def _adopt_dinotxt_state_dict(self, state_dict: dict, prefix: str, local_metadata, strict,
                                  missing_keys, unexpected_keys, error_msgs) -> None:
        """Load a dino.txt state dict (``visual_model.*``, ``text_model.*``,
        ``logit_scale``, as :meth:`state_dict` writes it) into ``self.dinotxt``; keys
        already under ``dinotxt.`` are accepted as well.

        ``tools/test.py`` loads checkpoints with ``strict=False``, so a file that does not
        fit would silently leave random heads: such a file is refused here instead.
        """
        own = prefix + 'dinotxt.'
        for key in [k for k in state_dict if k.startswith(prefix)
                    and k[len(prefix):].split('.', 1)[0] in _DINOTXT_KEYS]:
            state_dict[own + key[len(prefix):]] = state_dict.pop(key)
        needed = (own + 'visual_model.head.', own + 'text_model.')
        if not all(any(k.startswith(n) for k in state_dict) for n in needed):
            sample = sorted(state_dict)[:5]
            raise ValueError(
                'the checkpoint holds no dino.txt vision head and text tower (keys '
                "'visual_model.head.*' and 'text_model.*', optionally under 'dinotxt.'); "
                f'its first keys are {sample}. Pass a dino.txt checkpoint (a released '
                'vision-head-and-text-encoder file or a dino.txt training checkpoint).')

    # ---------------------------------------------------------------- text side
    def train(self, mode: bool = True) -> 'DINOTxtZeroShotSegmentor':
        self._text_features = None  # weights may change: recompute at the next prediction
        return super().train(mode)

    def text_features(self) -> Tensor:
        """(C, D/2) class text features: the patch half, prompt-ensembled (cached)."""
        device = self.dinotxt.logit_scale.device
        if self._text_features is None or self._text_features.device != device:
            self._text_features = self.dinotxt.class_text_embeddings(
                self.class_names, self.templates, part='patch').float()
        return self._text_features

    # ---------------------------------------------------------------- image side
    @property
    def patch_size(self) -> int:
        patch = self.dinotxt.visual_model.backbone.patch_size
        return int(patch[0] if isinstance(patch, (tuple, list)) else patch)

    def extract_feat(self, inputs: Tensor) -> List[Tensor]:
        """[(B, D, h, w)] L2-normalised head patch tokens of the image stretched (bicubic)
        to the next multiple of the patch size, as the notebook's ``encode_image``."""
        p = self.patch_size
        h, w = inputs.shape[2:]
        size = (-(-h // p) * p, -(-w // p) * p)
        if size != (h, w):
            inputs = F.interpolate(inputs, size=size, mode='bicubic', align_corners=False)
        _, patches, _ = self.dinotxt.visual_model.class_and_patch_tokens(inputs)
        grid = patches.reshape(inputs.shape[0], size[0] // p, size[1] // p, -1)
        return [F.normalize(grid.float(), dim=-1).permute(0, 3, 1, 2)]

    def patch_cosines(self, inputs: Tensor) -> Tensor:
        """(B, C, h, w) cosines of the head patch tokens with the class text features."""
        (feats, ) = self.extract_feat(inputs)
        return torch.einsum('cd,bdhw->bchw', self.text_features().to(feats), feats)

    def window_probs(self, window: Tensor) -> Tensor:
        """(B, C, H_win, W_win): softmax over classes of the cosines upsampled to the window."""
        cos = F.interpolate(self.patch_cosines(window), size=window.shape[2:], mode='bilinear',
                            align_corners=False)
        return cos.softmax(dim=1)

    def inference(self, inputs: Tensor, batch_img_metas: Optional[List[dict]] = None) -> Tensor:
        """'whole': (B, C, h, w) patch cosines; 'slide': (B, C, H, W) averaged window
        probabilities. :meth:`predict` resizes either to the label size."""
        if self.mode == 'whole':
            return self.patch_cosines(inputs)
        return slide_average(inputs, self.crop_size, self.stride, self.num_classes,
                             self.window_probs)

    def encode_decode(self, inputs: Tensor, batch_data_samples=None) -> Tensor:
        """(B, C, H, W) class scores at the input size (mmseg's segmentor interface)."""
        scores = self.inference(inputs)
        if scores.shape[2:] != inputs.shape[2:]:
            scores = F.interpolate(scores, size=inputs.shape[2:], mode='bilinear',
                                   align_corners=False)
        return scores

    # ---------------------------------------------------------------- MMEngine modes
    @torch.no_grad()
    def predict(self, inputs: Tensor, data_samples: Optional[List[SegDataSample]] = None
                ) -> List[SegDataSample]:
        """Segment a batch; ``seg_logits`` / ``pred_sem_seg`` at each sample's ``ori_shape``.

        Args:
            inputs (Tensor): (B, 3, H, W) normalised images (one size per batch).
            data_samples (list[SegDataSample], optional): With ``ori_shape`` (and
                ``padding_size`` when the pre-processor padded) in their metainfo. None:
                predictions at the input size.

        Returns:
            list[SegDataSample]: The samples with ``seg_logits`` (cosines in 'whole' mode,
            averaged probabilities in 'slide' mode) and ``pred_sem_seg``.
        """
        if data_samples is None:
            size = tuple(inputs.shape[2:])
            data_samples = [SegDataSample(metainfo=dict(ori_shape=size, img_shape=size,
                                                        pad_shape=size, padding_size=[0] * 4))
                            for _ in range(inputs.shape[0])]
        scores = self.inference(inputs, [s.metainfo for s in data_samples])
        if any(any(s.metainfo.get('padding_size', [0] * 4)) for s in data_samples):
            # postprocess_result crops the padding in input pixels: work at the input size.
            scores = F.interpolate(scores, size=inputs.shape[2:], mode='bilinear',
                                   align_corners=False)
        return self.postprocess_result(scores, data_samples)

    def loss(self, inputs: Tensor, data_samples) -> dict:
        raise RuntimeError(
            'DINOTxtZeroShotSegmentor is zero-shot: it has nothing to train (class text '
            'features against frozen dino.txt patch tokens). Train dino.txt itself with the '
            'caption configs (configs/dinotxt/*_coco-captions.py) and evaluate the checkpoint '
            'with this config through tools/test.py.')

    def _forward(self, inputs: Tensor, data_samples=None) -> Tensor:
        """'tensor' mode: (B, C, H, W) class scores at the input size."""
        return self.encode_decode(inputs, data_samples)

    def aug_test(self, batch_inputs, batch_img_metas):
        raise NotImplementedError('test-time augmentation goes through mmseg\'s SegTTAModel '
                                  '(tools/test.py --tta with the config\'s tta_pipeline)')


def _pair(value: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) <= 0:
        raise ValueError(f'{name} must be a positive (h, w) pair, got {value!r}')
    return pair
