"""BEiT-style block masking used by iBOT / DINOv2 / DINOv3."""
import math
import random
from typing import Optional, Tuple, Union

import numpy as np

from dino_mm.registry import TRANSFORMS

__all__ = ['MaskingGenerator']


@TRANSFORMS.register_module()
class MaskingGenerator:
    """Generate a boolean patch mask made of random rectangular blocks.

    Calling the generator with a target count adds blocks until that many patches are
    masked, or a block cannot be placed: each block draws an area uniformly in
    ``[min_num_patches, budget]`` (budget = remaining target, capped by
    ``max_num_patches``) and a log-uniform aspect ratio, gives up after 10 failed
    placements, and only counts if it adds between 1 and ``budget`` new patches.

    Randomness comes from Python's ``random`` module, drawn in the same order as the
    official generator, so equal ``random.seed`` gives equal masks (collate workers
    are seeded by the DataLoader).

    Args:
        input_size (int | tuple[int, int]): Patch grid (rows, cols).
        num_masking_patches (int, optional): Stored for reference only.
        min_num_patches (int): Smallest block area. Defaults to 4.
        max_num_patches (float, optional): Largest area added per block; defaults to
            ``num_masking_patches``. Official training uses ``0.5 * grid**2``.
        min_aspect (float): Smallest aspect ratio. Defaults to 0.3.
        max_aspect (float, optional): Largest; ``1 / min_aspect`` when None.
    """

    def __init__(self,
                 input_size: Union[int, Tuple[int, int]],
                 num_masking_patches: Optional[int] = None,
                 min_num_patches: int = 4,
                 max_num_patches: Optional[float] = None,
                 min_aspect: float = 0.3,
                 max_aspect: Optional[float] = None) -> None:
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        self.height, self.width = (int(s) for s in input_size)
        if self.height <= 0 or self.width <= 0 or min_aspect <= 0:
            raise ValueError(f'MaskingGenerator: bad input_size {input_size} or min_aspect '
                             f'{min_aspect}; both must be positive.')
        self.num_patches = self.height * self.width
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = (num_masking_patches
                                if max_num_patches is None else max_num_patches)
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(grid=({self.height}, {self.width}), '
                f'min_num_patches={self.min_num_patches}, '
                f'max_num_patches={self.max_num_patches}, '
                f'log_aspect_ratio={self.log_aspect_ratio})')

    def get_shape(self) -> Tuple[int, int]:
        return self.height, self.width

    def _add_block(self, mask: np.ndarray, budget: float) -> int:
        for _ in range(10):
            area = random.uniform(self.min_num_patches, budget)
            aspect = math.exp(random.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w >= self.width or h >= self.height:
                continue
            top = random.randint(0, self.height - h)
            left = random.randint(0, self.width - w)
            window = mask[top:top + h, left:left + w]
            added = int(h * w - window.sum())
            if 0 < added <= budget:
                window[...] = True
                return added
        return 0

    def __call__(self, num_masking_patches: int = 0) -> np.ndarray:
        """Return a ``(rows, cols)`` bool mask with about ``num_masking_patches`` set."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < num_masking_patches:
            budget = min(num_masking_patches - count, self.max_num_patches)
            added = self._add_block(mask, budget)
            if added == 0:
                break
            count += added
        return mask
