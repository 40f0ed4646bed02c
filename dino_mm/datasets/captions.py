"""Image-caption pairs in the COCO-Captions layout, for dino.txt text alignment."""
import json
import os.path as osp
import random
from typing import List, Optional

from mmengine.dataset import BaseDataset

from dino_mm.datasets.base import SkipCorruptMixin
from dino_mm.registry import DATASETS

__all__ = ['CocoCaptionsDataset', 'CAPTION_SAMPLING']

CAPTION_SAMPLING = ('random', 'first', 'all')
_DIGITS_TOOL = 'tools/dataset_converters/make_digits_captions.py'
_LAYOUT = ('annotations/captions_<split>2017.json (keys "images": [{id, file_name}] and '
           '"annotations": [{id, image_id, caption}]) with the images in <split>2017/')


def _first(items: list, n: int = 5) -> str:
    """The first ``n`` items, and how many more there are."""
    more = f' and {len(items) - n} more' if len(items) > n else ''
    return f'{items[:n]}{more}'


@DATASETS.register_module()
class CocoCaptionsDataset(SkipCorruptMixin, BaseDataset):
    """Images with their captions, read from a COCO-Captions annotation file.

    Layout (the official COCO 2017 one)::

        data_root/annotations/captions_train2017.json   {"images": [{"id", "file_name"}],
                                                          "annotations": [{"id", "image_id",
                                                                           "caption"}]}
        data_root/train2017/<file_name>
        data_root/annotations/captions_val2017.json + data_root/val2017/  (validation)

    Each data info holds ``img_path``, ``image_id``, ``captions`` (list[str], the image's
    captions in annotation-file order, stripped), and, once fetched, ``caption`` (the
    caption of this sample) and ``caption_idx`` (its index in ``captions``), set before
    the pipeline runs; keep ``'caption'`` in the ``meta_keys`` of ``PackInputs`` so the
    model can read it from the data sample. Images are listed in the order of
    ``images``. Everything is checked when the annotation file is read: a missing file,
    a JSON without ``images`` / ``annotations``, a caption of an unknown image, an
    image without caption, an empty caption and a missing image file are errors naming
    the file, the ids and what to do (no image is opened at load time).

    Args:
        ann_file (str): Annotation file, relative to ``data_root``. Defaults to
            ``'annotations/captions_train2017.json'``.
        data_root (str): Dataset root. Defaults to ``''``.
        data_prefix (dict, optional): ``img_path``: the images folder, relative to
            ``data_root``. Defaults to ``dict(img_path='train2017')``.
        caption_sampling (str): ``'random'`` (default): one sample per image, whose
            caption is drawn with Python's ``random`` at every fetch (as the official
            DINOv3 ``CocoCaptions``; MMEngine seeds ``random`` in each DataLoader
            worker); ``'first'``: one sample per image, always its first caption
            (deterministic, for evaluation); ``'all'``: one sample per (image, caption)
            pair, image-major.
        skip_corrupt (bool): Skip unreadable images (see ``SkipCorruptMixin``).
            Defaults to False.
        **kwargs: ``pipeline``, ``test_mode``, ``lazy_init``, ``indices``,
            ``serialize_data``, ``max_refetch``, ``metainfo`` of
            :class:`mmengine.dataset.BaseDataset`.
    """

    def __init__(self,
                 ann_file: str = 'annotations/captions_train2017.json',
                 data_root: str = '',
                 data_prefix: Optional[dict] = None,
                 caption_sampling: str = 'random',
                 skip_corrupt: bool = False,
                 **kwargs) -> None:
        if caption_sampling not in CAPTION_SAMPLING:
            raise ValueError(f'CocoCaptionsDataset: caption_sampling must be one of '
                             f'{CAPTION_SAMPLING}, got {caption_sampling!r}.')
        self.caption_sampling = caption_sampling
        self.skip_corrupt = skip_corrupt
        self.num_skipped = 0
        if data_prefix is None:
            data_prefix = dict(img_path='train2017')
        super().__init__(ann_file=ann_file, data_root=data_root, data_prefix=data_prefix,
                         **kwargs)

    def _root_hint(self) -> str:
        return f'the COCO-Captions layout ({_LAYOUT})'

    def _empty_hint(self) -> str:
        return (f'"{self.ann_file}" lists no image. Check ann_file, or rebuild the file '
                f'(for the digits demo: `python {_DIGITS_TOOL} --out <data_root>`).')

    def _read_annotations(self) -> dict:
        path = self.ann_file
        if not osp.isfile(path):
            raise FileNotFoundError(
                f'CocoCaptionsDataset: annotation file "{path}" does not exist (ann_file is '
                f'relative to data_root {self.data_root!r}). Expected {_LAYOUT}. Set '
                'ann_file / data_root in the dataset config, or build the digits demo '
                f'data with `python {_DIGITS_TOOL} --out <data_root>`.')
        try:
            with open(path, encoding='utf-8') as f:
                ann = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f'CocoCaptionsDataset: "{path}" is not valid JSON ({e}); '
                             f're-download or rebuild it (expected {_LAYOUT}).') from e
        missing = [k for k in ('images', 'annotations')
                   if not isinstance(ann, dict) or not isinstance(ann.get(k), list)]
        if missing:
            found = sorted(ann) if isinstance(ann, dict) else type(ann).__name__
            raise ValueError(
                f'CocoCaptionsDataset: "{path}" has no {" / ".join(map(repr, missing))} list '
                f'(found {found}); a COCO-Captions file holds both, see {_LAYOUT}.')
        return ann

    def load_data_list(self) -> List[dict]:
        path = self.ann_file
        ann = self._read_annotations()
        images = {}
        for img in ann['images']:
            if not isinstance(img, dict) or 'id' not in img or 'file_name' not in img:
                raise ValueError(f'CocoCaptionsDataset: "{path}": image entry '
                                 f'{repr(img)[:80]} lacks "id" or "file_name"; every entry of '
                                 '"images" needs both.')
            if img['id'] in images:
                raise ValueError(f'CocoCaptionsDataset: "{path}" lists image id {img["id"]!r} '
                                 f'twice ("{images[img["id"]]["file_name"]}" and '
                                 f'"{img["file_name"]}"); image ids must be unique.')
            images[img['id']] = img
        captions = {image_id: [] for image_id in images}
        for a in ann['annotations']:
            if not isinstance(a, dict) or 'image_id' not in a or 'caption' not in a:
                what = (f'id {a.get("id")!r} (keys {sorted(a)})' if isinstance(a, dict)
                        else repr(a)[:80])
                raise ValueError(f'CocoCaptionsDataset: "{path}": annotation {what} lacks '
                                 '"image_id" or "caption"; every entry of "annotations" '
                                 'needs both (an instances_*.json file is not a captions '
                                 'file).')
            if a['image_id'] not in images:
                raise ValueError(
                    f'CocoCaptionsDataset: "{path}": annotation id {a.get("id")!r} refers to '
                    f'image_id {a["image_id"]!r}, which is not in "images". Add the image '
                    'to "images" or remove the annotation (is ann_file the right split?).')
            text = a['caption']
            if not isinstance(text, str) or not text.strip():
                raise ValueError(
                    f'CocoCaptionsDataset: "{path}": annotation id {a.get("id")!r} of image '
                    f'"{images[a["image_id"]]["file_name"]}" (id {a["image_id"]!r}) has an '
                    f'empty caption ({text!r}); write the caption or remove the annotation.')
            captions[a['image_id']].append(text.strip())
        uncaptioned = [i for i, c in captions.items() if not c]
        if uncaptioned:
            raise ValueError(
                f'CocoCaptionsDataset: "{path}": {len(uncaptioned)} of {len(images)} images '
                f'have no caption (image ids {_first(uncaptioned)}). Add captions for them '
                'to "annotations", or remove them from "images".')
        folder = self.data_prefix.get('img_path', '') or self.data_root
        data_list, missing = [], []
        for image_id, img in images.items():
            img_path = osp.join(folder, img['file_name'])
            if not osp.exists(img_path):
                missing.append(img_path)
            data_list.append(dict(img_path=img_path, image_id=image_id,
                                  captions=captions[image_id]))
        if missing:
            raise FileNotFoundError(
                f'CocoCaptionsDataset: {len(missing)} of {len(images)} image files listed in '
                f'"{path}" do not exist in the images folder "{folder}": {_first(missing)}. '
                "Set data_prefix=dict(img_path=...) (relative to data_root) to the folder "
                'holding them (train2017/ or val2017/, matching ann_file), or restore the '
                'files.')
        if self.caption_sampling == 'all':
            data_list = [dict(info, caption_idx=j) for info in data_list
                         for j in range(len(info['captions']))]
        return data_list

    def get_data_info(self, idx: int) -> dict:
        """The data info of sample ``idx`` with its ``caption`` (drawn anew at every call
        for ``'random'``) and ``caption_idx``."""
        info = super().get_data_info(idx)  # a fresh copy, also when serialized
        captions = info['captions']
        if self.caption_sampling == 'random':
            j = random.randrange(len(captions))
        elif self.caption_sampling == 'first':
            j = 0
        else:
            j = info['caption_idx']
        info['caption'], info['caption_idx'] = captions[j], j
        return info
