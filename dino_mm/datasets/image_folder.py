"""A recursive folder of images, optionally labelled by sub-folder."""
import os
import warnings
from typing import List, Sequence

from mmengine.dataset import BaseDataset

from dino_mm.datasets.base import SkipCorruptMixin
from dino_mm.registry import DATASETS

__all__ = ['ImageFolderDataset']


@DATASETS.register_module()
class ImageFolderDataset(SkipCorruptMixin, BaseDataset):
    """All images under ``data_root`` (recursively, sorted paths).

    Args:
        data_root (str): Folder to scan.
        extensions (Sequence[str]): File suffixes to keep, case-insensitive.
            Defaults to common image formats.
        with_label (bool): Label each image by its top-level sub-folder (sorted
            folder names -> class indices, stored in ``metainfo['classes']``; a folder
            without an image keeps its index, with a warning); images directly in
            ``data_root`` are then an error. Defaults to False
            (``gt_label`` = -1, for self-supervised pretraining).
        follow_links (bool): Follow symlinked folders. Defaults to True.
        skip_corrupt (bool): Skip unreadable images. Defaults to False.
        **kwargs: Arguments of :class:`mmengine.dataset.BaseDataset`.
    """

    def __init__(self,
                 data_root: str = '',
                 extensions: Sequence[str] = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm',
                                              '.tif', '.tiff', '.webp'),
                 with_label: bool = False,
                 follow_links: bool = True,
                 skip_corrupt: bool = False,
                 **kwargs) -> None:
        self.extensions = tuple(e.lower() if e.startswith('.') else '.' + e.lower()
                                for e in extensions)
        self.with_label = with_label
        self.follow_links = follow_links
        self.skip_corrupt = skip_corrupt
        self.num_skipped = 0
        super().__init__(data_root=data_root, **kwargs)

    def _root_hint(self) -> str:
        return ('the images' + (' (one sub-folder per class)' if self.with_label else ''))

    def load_data_list(self) -> List[dict]:
        root = self.data_root
        if not os.path.isdir(root):
            raise FileNotFoundError(
                f'ImageFolderDataset: data_root "{root}" is not a folder. In a config, set '
                'it with --cfg-options train_dataloader.dataset.data_root=/path/to/images '
                '(a top-level data_root=... does not reach an already-built dataset dict).')
        paths = []
        for dirpath, dirnames, files in os.walk(root, followlinks=self.follow_links):
            dirnames.sort()
            paths.extend(os.path.join(dirpath, f) for f in files
                         if f.lower().endswith(self.extensions))
        paths.sort()
        if not paths:
            raise FileNotFoundError(f'ImageFolderDataset: no files ending in {self.extensions} '
                                    f'under "{root}"; check data_root / extensions.')
        if not self.with_label:
            return [dict(img_path=p, gt_label=-1) for p in paths]
        rel = [os.path.relpath(p, root).split(os.sep) for p in paths]
        loose = [p for p, r in zip(paths, rel) if len(r) == 1]
        if loose:
            raise ValueError(f'ImageFolderDataset(with_label=True): "{loose[0]}" is not inside '
                             'a class sub-folder; move it or set with_label=False.')
        # Every top-level folder is a class, also one without an image, so that an empty
        # folder does not shift the index of every later class (torchvision's order).
        with_images = {r[0] for r in rel}
        folders = {e.name for e in os.scandir(root)
                   if e.is_dir(follow_symlinks=self.follow_links)}
        classes = sorted(folders | with_images)
        empty = [(i, c) for i, c in enumerate(classes) if c not in with_images]
        if empty:
            listed = ', '.join(f'"{os.path.join(root, c)}" (class {i})' for i, c in empty[:10])
            more = f' and {len(empty) - 10} more' if len(empty) > 10 else ''
            warnings.warn(
                f'ImageFolderDataset(with_label=True): {len(empty)} class folder(s) hold no '
                f'file ending in {self.extensions}: {listed}{more}. They keep their class '
                'index (sorted folder names) and have no sample; add their images, or '
                'remove the folders if they are not classes.', UserWarning, stacklevel=2)
        self._metainfo.setdefault('classes', tuple(classes))
        index = {c: i for i, c in enumerate(classes)}
        return [dict(img_path=p, gt_label=index[r[0]]) for p, r in zip(paths, rel)]
