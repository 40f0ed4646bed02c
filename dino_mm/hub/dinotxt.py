"""Hub constructors for dino.txt, named like the official entries.

Both return ``(model, tokenizer)``: a :class:`~dino_mm.models.text.DINOTxt` in eval mode
and the CLIP BPE :class:`~dino_mm.models.text.CLIPTokenizer` (``tokenizer.tokenize(texts)``
gives the token ids ``model.encode_text`` takes). The official DINOv3 entry returns the
same pair; the official DINOv2 entry returns the model and has a separate
``get_tokenizer()`` -- here it returns the pair too, so both read alike.

Weights are local files found like every dino_mm hub entry (``$DINO_MM_WEIGHTS``,
``~/.cache/dino_mm/weights``, torch.hub's checkpoint folder; nothing is downloaded):

* ``dinov3_vitl16_dinotxt_tet1280d20h24l``: one file with the vision head, the text
  tower and ``logit_scale`` (``visual_model.head.*``, ``text_model.*``), on the
  ``dinov3_vitl16`` LVD-1689M backbone;
* ``dinov2_vitl14_reg4_dinotxt_tet1280d20h24l``: a vision-head file (keys relative to
  ``visual_model.head``) and a text-encoder file (relative to ``text_model``), on the
  ``dinov2_vitl14_reg`` backbone.

``pretrained`` is tri-state as for the backbones: None (default) loads every file that is
here and otherwise warns loudly and returns random weights for all parts; True makes a
missing file an error; False gives the random init.
"""
import math
from typing import Optional, Tuple

from dino_mm.models.text import CLIPTokenizer, DINOTxt
from . import backbones as _backbones
from .utils import WeightsRequest, resolve_entry_weights

__all__ = ['dinov3_vitl16_dinotxt_tet1280d20h24l', 'dinov2_vitl14_reg4_dinotxt_tet1280d20h24l',
           'DINOTXT_WEIGHTS', 'dinotxt_text_backbone_cfg', 'load_dinotxt_weights']

DINOTXT_WEIGHTS = {
    'dinov3_vitl16_dinotxt_tet1280d20h24l': {
        'LVTD2300M': 'dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth'},
    'dinov2_vitl14_reg4_dinotxt_tet1280d20h24l': {
        'vision_head': 'dinov2_vitl14_reg4_dinotxt_tet1280d20h24l_vision_head.pth',
        'text_encoder': 'dinov2_vitl14_reg4_dinotxt_tet1280d20h24l_text_encoder.pth'},
}


def dinotxt_text_backbone_cfg(**overrides) -> dict:
    """The ``tet1280d20h24l`` text transformer of both releases."""
    cfg = dict(type='dino_mm.TextTransformer', context_length=77, vocab_size=49408, dim=1280,
               num_heads=20, num_layers=24, ffn_ratio=4.0, is_causal=True, ls_init_value=None,
               dropout_prob=0.0)
    cfg.update(overrides)
    return cfg


# The releases' DINOTxtConfig, in DINOTxt's argument names.
RELEASE_VISION = dict(freeze_backbone=True, num_head_blocks=2, head_drop_path=0.3,
                      use_class_token=True, use_patch_tokens=True, patch_token_layer=1,
                      patch_pooler='mean', use_linear_projection=False)
RELEASE_TEXT = dict(freeze_backbone=False, num_head_blocks=0, head_is_causal=False,
                    head_drop_prob=0.0, pooler='argmax', use_linear_projection=True)


def load_dinotxt_weights(model: DINOTxt, path: str, prefix: str = '') -> None:
    """Load a released dino.txt file strictly into ``model`` (or its ``prefix`` part).

    Every tensor of the file must fit, and every parameter of the part must be in the
    file, except the frozen vision backbone, which the releases do not store.

    Raises:
        KeyError: Naming the missing and unexpected keys.
    """
    from dino_mm.models.converters import load_state_dict_file
    state_dict, _ = load_state_dict_file(path)
    # the whole DINOTxt fills the (absent) frozen backbone with the weights it has
    target = model.get_submodule(prefix.rstrip('.')) if prefix else model
    result = target.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not (prefix + k).startswith('visual_model.backbone.')]
    if missing or result.unexpected_keys:
        raise KeyError(f'{path}: does not fit {type(target).__name__}'
                       f'{" (" + prefix.rstrip(".") + ")" if prefix else ""}: '
                       f'{len(missing)} missing keys {missing[:5]}, '
                       f'{len(result.unexpected_keys)} unexpected keys '
                       f'{result.unexpected_keys[:5]}; is it the right dino.txt file?')


def _build(name: str, backbone_entry: str, release: str, pretrained: Optional[bool],
           requests, backbone_weights: Optional[str], bpe_path: Optional[str],
           text_kwargs: Optional[dict], **backbone_kwargs) -> Tuple[DINOTxt, dict]:
    bb_files = _backbones.BACKBONE_WEIGHTS[backbone_entry]
    requests = list(requests) + [WeightsRequest(
        'backbone', backbone_weights, bb_files, next(iter(bb_files)),
        explicit=backbone_weights is not None, arg='backbone_weights')]
    paths = resolve_entry_weights(name, pretrained, requests)
    backbone = getattr(_backbones, backbone_entry)(
        pretrained=paths['backbone'] is not None, weights=paths['backbone'], **backbone_kwargs)
    model = DINOTxt(backbone, dinotxt_text_backbone_cfg(**(text_kwargs or {})), embed_dim=2048,
                    vision=dict(RELEASE_VISION), text=dict(RELEASE_TEXT), release=release,
                    tokenizer=CLIPTokenizer(bpe_path), init_logit_scale=math.log(1 / 0.07))
    if paths['backbone'] is not None:
        model.mark_backbone_loaded(paths['backbone'])
    return model, paths


def dinov3_vitl16_dinotxt_tet1280d20h24l(
        *, pretrained: Optional[bool] = None, weights: Optional[str] = None,
        backbone_weights: Optional[str] = None, bpe_path_or_url: Optional[str] = None,
        text_kwargs: Optional[dict] = None, **backbone_kwargs) -> Tuple[DINOTxt, CLIPTokenizer]:
    """Official DINOv3 dino.txt: ViT-L/16 + 2 head blocks, ``tet1280d20h24l`` text tower.

    Args:
        pretrained (bool, optional): See the module docstring.
        weights (str, optional): The vision-head-and-text-encoder file (``LVTD2300M``:
            ``dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth``) or a path.
        backbone_weights (str, optional): The ``dinov3_vitl16`` backbone file or tag.
        bpe_path_or_url (str, optional): Local BPE vocabulary (``bpe_simple_vocab_16e6.txt.gz``);
            defaults to the copy shipped by open_clip. URLs are refused (never downloads).
        text_kwargs (dict, optional): Override text-transformer arguments (tests: depth).
        **backbone_kwargs: Override backbone arguments (e.g. ``depth`` for tests).
    """
    name = 'dinov3_vitl16_dinotxt_tet1280d20h24l'
    files = DINOTXT_WEIGHTS[name]
    model, paths = _build(name, 'dinov3_vitl16', 'dinov3', pretrained, [
        WeightsRequest('dinotxt', weights, files, 'LVTD2300M', explicit=weights is not None)],
        backbone_weights, bpe_path_or_url, text_kwargs, **backbone_kwargs)
    if paths['dinotxt'] is not None:
        load_dinotxt_weights(model, paths['dinotxt'])
    return model.eval(), model.tokenizer


def dinov2_vitl14_reg4_dinotxt_tet1280d20h24l(
        *, pretrained: Optional[bool] = None, weights: Optional[str] = None,
        text_weights: Optional[str] = None, backbone_weights: Optional[str] = None,
        bpe_path_or_url: Optional[str] = None, text_kwargs: Optional[dict] = None,
        **backbone_kwargs) -> Tuple[DINOTxt, CLIPTokenizer]:
    """Official DINOv2 dino.txt: ViT-L/14 with 4 registers, ``tet1280d20h24l`` text tower.

    Args:
        pretrained (bool, optional): See the module docstring.
        weights (str, optional): The vision-head file
            (``dinov2_vitl14_reg4_dinotxt_tet1280d20h24l_vision_head.pth``) or a path.
        text_weights (str, optional): The text-encoder file
            (``dinov2_vitl14_reg4_dinotxt_tet1280d20h24l_text_encoder.pth``) or a path.
        backbone_weights (str, optional): The ``dinov2_vitl14_reg`` backbone file or tag.
        bpe_path_or_url (str, optional): Local BPE vocabulary; see the DINOv3 entry.
        text_kwargs (dict, optional): Override text-transformer arguments.
        **backbone_kwargs: Override backbone arguments.
    """
    name = 'dinov2_vitl14_reg4_dinotxt_tet1280d20h24l'
    files = DINOTXT_WEIGHTS[name]
    model, paths = _build(name, 'dinov2_vitl14_reg', 'dinov2', pretrained, [
        WeightsRequest('vision_head', weights, {'VISION_HEAD': files['vision_head']},
                       'VISION_HEAD', explicit=weights is not None),
        WeightsRequest('text_encoder', text_weights, {'TEXT_ENCODER': files['text_encoder']},
                       'TEXT_ENCODER', explicit=text_weights is not None, arg='text_weights')],
        backbone_weights, bpe_path_or_url, text_kwargs, **backbone_kwargs)
    if paths['vision_head'] is not None:
        load_dinotxt_weights(model, paths['vision_head'], prefix='visual_model.head.')
    if paths['text_encoder'] is not None:
        load_dinotxt_weights(model, paths['text_encoder'], prefix='text_model.')
    return model.eval(), model.tokenizer

