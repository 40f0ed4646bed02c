"""Coloured depth maps written during testing (``tools/test.py --show-dir``)."""
import os
import os.path as osp
from typing import Optional, Sequence

import cv2
import numpy as np
from mmengine.hooks import Hook

from dino_mm.registry import HOOKS


def colorize_depth(depth: np.ndarray, vmin: float, vmax: float,
                   colormap: int = cv2.COLORMAP_MAGMA) -> np.ndarray:
    """Map a depth array (H, W) to a BGR uint8 image; near = bright, invalid (<= 0) = black.

    Args:
        depth (np.ndarray): Depth in metres.
        vmin (float): Depth drawn with the brightest colour.
        vmax (float): Depth drawn with the darkest colour.
        colormap (int): OpenCV colormap. Defaults to magma.
    """
    depth = np.asarray(depth, dtype=np.float32)
    norm = (vmax - np.clip(depth, vmin, vmax)) / max(vmax - vmin, 1e-6)
    img = cv2.applyColorMap((norm * 255).astype(np.uint8), colormap)
    img[~(depth > 0)] = 0
    return img


@HOOKS.register_module()
class DepthVisualizationHook(Hook):
    """Write ``image | ground truth | prediction`` panels (coloured depth) for test samples.

    Follows the arguments of mmseg's ``SegVisualizationHook`` / mmdet's ``DetVisualizationHook``
    so ``tools/test.py --show-dir DIR`` can switch it on (``draw=True``, ``show_dir=DIR``).

    Args:
        draw (bool): Whether to write anything. Defaults to False.
        interval (int): Draw every ``interval``-th test iteration. Defaults to 1.
        test_out_dir (str, optional): Output folder; a relative path is put under
            ``work_dir/<timestamp>/``. Defaults to None (then the visualizer's ``save_dir``
            or ``work_dir/<timestamp>/vis_depth``).
        show_dir (str, optional): Same as ``test_out_dir`` (set by ``tools/test.py
            --show-dir``); takes precedence.
        out_dir (str, optional): Alias of ``test_out_dir``.
        max_depth (float, optional): Fixed colour range end; default: per image, the
            largest ground-truth or predicted depth.
    """

    priority = 'NORMAL'

    def __init__(self,
                 draw: bool = False,
                 interval: int = 1,
                 test_out_dir: Optional[str] = None,
                 show_dir: Optional[str] = None,
                 out_dir: Optional[str] = None,
                 max_depth: Optional[float] = None,
                 **kwargs) -> None:
        self.draw = draw
        self.interval = interval
        self.test_out_dir = show_dir or test_out_dir or out_dir
        self.max_depth = max_depth
        self._out = None

    def _out_dir(self, runner) -> str:
        if self._out is None:
            out = self.test_out_dir
            if out is None:
                vis = getattr(runner, 'visualizer', None)
                out = getattr(vis, '_save_dir', None) or 'vis_depth'
            if not osp.isabs(out):
                out = osp.join(runner.work_dir, runner.timestamp, out)
            os.makedirs(out, exist_ok=True)
            self._out = out
        return self._out

    def after_test_iter(self, runner, batch_idx: int, data_batch: dict = None,
                        outputs: Sequence = None) -> None:
        if not self.draw or outputs is None or batch_idx % self.interval:
            return
        out_dir = self._out_dir(runner)
        for sample in outputs:
            pred = sample.pred_depth_map.data.squeeze().detach().cpu().numpy()
            panels = []
            img_path = sample.metainfo.get('img_path')
            img = cv2.imread(img_path) if img_path else None
            if img is not None:
                panels.append(cv2.resize(img, (pred.shape[1], pred.shape[0])))
            gt = None
            if 'gt_depth_map' in sample:
                gt = sample.gt_depth_map.data.squeeze().detach().cpu().numpy()
                if gt.shape != pred.shape:
                    gt = None
            vmax = self.max_depth or float(max(pred.max(), gt.max() if gt is not None else 0))
            if gt is not None:
                panels.append(colorize_depth(gt, 0.0, vmax))
            panels.append(colorize_depth(pred, 0.0, vmax))
            name = osp.splitext(osp.basename(img_path))[0] if img_path else f'{batch_idx}'
            cv2.imwrite(osp.join(out_dir, f'{name}_depth.png'), np.concatenate(panels, axis=1))
