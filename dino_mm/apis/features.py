"""Algorithms on patch-feature grids: PCA colour maps, dense / sparse matching,
foreground segmentation from a few labelled patches, and video label propagation.

Every function takes feature grids ``(rows, cols, D)`` (``torch.Tensor`` or
``np.ndarray``) as produced by any extractor in :mod:`dino_mm.apis.extractors`, so the
algorithms are independent of the backbone and testable with raw-pixel features.
"""
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

Grid = Union[torch.Tensor, np.ndarray]


def _as_grid(features: Grid, name: str = 'features') -> torch.Tensor:
    t = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
    if t.ndim != 3:
        raise ValueError(f'{name} must be a (rows, cols, D) grid, got shape {tuple(t.shape)}.')
    return t.float()


# ----------------------------------------------------------------------------- PCA
@dataclass
class PCAResult:
    """Output of :func:`pca_maps`.

    Attributes:
        maps (list[np.ndarray]): Per image (rows, cols, n_components) float in [0, 1];
            background patches are 0 (black).
        masks (list[np.ndarray]): Per image (rows, cols) bool foreground masks (all True
            when no foreground selection was asked for).
        mean (np.ndarray): (D,) mean of the patches the PCA was fitted on.
        components (np.ndarray): (n_components, D) unit principal axes.
        explained_variance (np.ndarray): (n_components,) variances along the axes.
    """
    maps: List[np.ndarray]
    masks: List[np.ndarray]
    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray


def fit_pca(x: torch.Tensor, n_components: int = 3
            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact PCA by SVD of the centred data (float64).

    The sign of each axis is fixed so that its largest-magnitude loading is positive
    (the convention of scikit-learn's ``svd_flip``), making colours reproducible.

    Args:
        x (torch.Tensor): (N, D) samples.
        n_components (int): Number of axes. Defaults to 3.

    Returns:
        tuple: mean (D,), components (n_components, D), explained variance (n_components,).
    """
    n, d = x.shape
    if n_components > min(n, d):
        raise ValueError(f'Cannot fit {n_components} PCA components on {n} samples of '
                         f'dimension {d}; give more patches (larger images or more images).')
    x64 = x.double()
    mean = x64.mean(0)
    # Exact SVD rather than torch.pca_lowrank: the latter is randomised and its colours
    # would change between runs.
    _, s, vh = torch.linalg.svd(x64 - mean, full_matrices=False)
    comps = vh[:n_components]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    signs[signs == 0] = 1
    comps = comps * signs
    var = s[:n_components]**2 / max(n - 1, 1)
    return mean.float(), comps.float(), var.float()


def pca_maps(features: Sequence[Grid], n_components: int = 3,
             foreground: Union[None, str, Sequence[np.ndarray]] = None,
             threshold: float = 0.0, invert: bool = False, scaling: str = 'minmax',
             sigmoid_gain: float = 2.0) -> PCAResult:
    """First principal components of patch features, mapped to colours.

    The PCA is fitted jointly over the (foreground) patches of all images, so the same
    colour means the same feature direction in every image.

    Args:
        features (Sequence): Per image (rows, cols, D) grids (grids may differ in size).
        n_components (int): Number of components (3 for RGB). Defaults to 3.
        foreground (None | str | Sequence[np.ndarray]): ``None`` uses every patch;
            ``'threshold'`` keeps patches whose projection on the first component of a
            PCA over all patches exceeds ``threshold`` (the DINOv2 demo recipe), then
            refits on those; a sequence of (rows, cols) masks or probability maps
            (> 0.5 = foreground, e.g. from :class:`ForegroundClassifier`) selects them
            directly. Defaults to None.
        threshold (float): Threshold on the first component, in units of that
            component's standard deviation. Defaults to 0.
        invert (bool): Keep patches *below* the threshold (the sign of a principal axis
            is a convention, so which side is the object depends on the data).
            Defaults to False.
        scaling (str): ``'minmax'``: each component is mapped linearly so that the
            foreground patches span [0, 1]; ``'sigmoid'``: whitened projections
            ``z / sqrt(variance)`` go through ``sigmoid(sigmoid_gain * z)`` (the DINOv3
            notebook's rendering; robust to outliers). Defaults to 'minmax'.
        sigmoid_gain (float): Gain of the sigmoid scaling. Defaults to 2.

    Returns:
        PCAResult: colour maps, masks and the fitted PCA.
    """
    if scaling not in ('minmax', 'sigmoid'):
        raise ValueError(f"scaling must be 'minmax' or 'sigmoid', got {scaling!r}.")
    grids = [_as_grid(f, f'features[{i}]') for i, f in enumerate(features)]
    if not grids:
        raise ValueError('pca_maps needs at least one feature grid.')
    dims = {g.shape[-1] for g in grids}
    if len(dims) != 1:
        raise ValueError(f'All feature grids must have the same dimension, got {sorted(dims)}.')
    flat = torch.cat([g.reshape(-1, g.shape[-1]) for g in grids])
    sizes = [g.shape[0] * g.shape[1] for g in grids]

    if foreground is None:
        keep = torch.ones(len(flat), dtype=torch.bool)
    elif isinstance(foreground, str):
        if foreground != 'threshold':
            raise ValueError(f"foreground must be None, 'threshold' or a list of masks, "
                             f'got {foreground!r}.')
        mean0, comps0, var0 = fit_pca(flat, 1)
        first = ((flat - mean0) @ comps0[0]) / var0[0].clamp_min(1e-12).sqrt()
        keep = first < threshold if invert else first > threshold
    else:
        if len(foreground) != len(grids):
            raise ValueError(f'Got {len(foreground)} foreground masks for {len(grids)} '
                             f'images.')
        parts = []
        for i, (mask, g) in enumerate(zip(foreground, grids)):
            m = np.asarray(mask)
            if m.shape != tuple(g.shape[:2]):
                raise ValueError(f'foreground[{i}] has shape {m.shape}, expected the patch '
                                 f'grid {tuple(g.shape[:2])}.')
            parts.append(torch.from_numpy(m.astype(np.float32) > 0.5).reshape(-1))
        keep = torch.cat(parts)
    if int(keep.sum()) <= n_components:
        raise ValueError(f'Only {int(keep.sum())} foreground patches: too few for a '
                         f'{n_components}-component PCA. Lower the threshold or flip '
                         f'`invert`.')

    mean, comps, var = fit_pca(flat[keep], n_components)
    proj = (flat - mean) @ comps.T
    if scaling == 'minmax':
        lo = proj[keep].min(0).values
        hi = proj[keep].max(0).values
        colours = (proj - lo) / (hi - lo).clamp_min(1e-12)
    else:
        colours = torch.sigmoid(sigmoid_gain * proj / var.clamp_min(1e-12).sqrt())
    colours = colours.clamp(0, 1) * keep[:, None]

    maps, masks = [], []
    for g, c, k in zip(grids, colours.split(sizes), keep.split(sizes)):
        maps.append(c.reshape(g.shape[0], g.shape[1], n_components).numpy())
        masks.append(k.reshape(g.shape[0], g.shape[1]).numpy())
    return PCAResult(maps, masks, mean.numpy(), comps.numpy(), var.numpy())


# ------------------------------------------------------------------------ matching
@dataclass
class Matches:
    """Patch correspondences between image A and image B.

    Attributes:
        idx_a (np.ndarray): (M,) flat patch indices (row * cols + col) in A.
        idx_b (np.ndarray): (M,) flat patch indices in B.
        similarity (np.ndarray): (M,) cosine similarity of each pair.
        mutual (np.ndarray): (M,) whether the pair is a mutual nearest neighbour.
        distinctiveness (np.ndarray): (M,) ``1 - d1 / d2`` (Lowe's ratio on Euclidean
            distances of unit features): 0 = ambiguous, 1 = unique.
    """
    idx_a: np.ndarray
    idx_b: np.ndarray
    similarity: np.ndarray
    mutual: np.ndarray
    distinctiveness: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.idx_a)

    def select(self, keep: np.ndarray) -> 'Matches':
        return Matches(self.idx_a[keep], self.idx_b[keep], self.similarity[keep],
                       self.mutual[keep], self.distinctiveness[keep])


def cosine_similarity(feats_a: Grid, feats_b: Grid) -> torch.Tensor:
    """(Na, Nb) cosine similarities between the flattened patches of two grids."""
    a = F.normalize(_as_grid(feats_a, 'feats_a').flatten(0, 1), dim=-1)
    b = F.normalize(_as_grid(feats_b, 'feats_b').flatten(0, 1), dim=-1)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f'Feature dimensions differ: {a.shape[-1]} vs {b.shape[-1]}.')
    return a @ b.T


def _nn_matches(sim: torch.Tensor, query: Optional[torch.Tensor] = None) -> Matches:
    rows = torch.arange(sim.shape[0]) if query is None else query
    sub = sim[rows]
    k = min(2, sub.shape[1])
    top = sub.topk(k, dim=1)
    best = top.indices[:, 0]
    back = sim[:, best].argmax(0)
    mutual = back == rows
    # For unit vectors the Euclidean distance is sqrt(2 - 2 cos).
    dist = (2 - 2 * top.values).clamp_min(0).sqrt()
    if k == 2:
        distinct = 1 - dist[:, 0] / dist[:, 1].clamp_min(1e-12)
    else:
        distinct = torch.ones(len(rows))
    return Matches(rows.numpy(), best.numpy(), top.values[:, 0].numpy(), mutual.numpy(),
                   distinct.clamp(0, 1).numpy())


def dense_matches(feats_a: Grid, feats_b: Grid, mutual: bool = True) -> Matches:
    """Nearest-neighbour (cosine) correspondence for every patch of A.

    Args:
        feats_a (Grid): (rows_a, cols_a, D) features of image A.
        feats_b (Grid): (rows_b, cols_b, D) features of image B.
        mutual (bool): Keep only mutual nearest neighbours (A->B->A returns to the
            start). Defaults to True.

    Returns:
        Matches: one entry per (kept) patch of A.
    """
    matches = _nn_matches(cosine_similarity(feats_a, feats_b))
    return matches.select(matches.mutual) if mutual else matches


def sparse_matches(feats_a: Grid, feats_b: Grid, query: Optional[np.ndarray] = None,
                   top_k: Optional[int] = None, mutual: bool = True,
                   rank_by: str = 'distinctiveness') -> Matches:
    """A few reliable correspondences.

    Args:
        feats_a (Grid): (rows_a, cols_a, D) features of image A.
        feats_b (Grid): (rows_b, cols_b, D) features of image B.
        query (np.ndarray, optional): Flat patch indices in A to match (e.g. from
            keypoints via :meth:`ImageFeatures.pixel_to_patch`). Every query gets its
            nearest neighbour; ``mutual`` is reported, not enforced. Defaults to None.
        top_k (int, optional): Without ``query``: return the ``top_k`` best (mutual if
            ``mutual``) matches. Defaults to None (all).
        mutual (bool): Restrict the top-k candidates to mutual nearest neighbours.
            Defaults to True.
        rank_by (str): ``'distinctiveness'`` (Lowe's ratio) or ``'similarity'``.
            Defaults to 'distinctiveness'.

    Returns:
        Matches: sorted best first when ranked.
    """
    if rank_by not in ('distinctiveness', 'similarity'):
        raise ValueError(f"rank_by must be 'distinctiveness' or 'similarity', got {rank_by!r}.")
    sim = cosine_similarity(feats_a, feats_b)
    if query is not None:
        q = torch.as_tensor(np.asarray(query, dtype=np.int64).reshape(-1))
        if len(q) and (q.min() < 0 or q.max() >= sim.shape[0]):
            raise ValueError(f'Query patch indices must lie in [0, {sim.shape[0]}).')
        return _nn_matches(sim, q)
    matches = _nn_matches(sim)
    if mutual:
        matches = matches.select(matches.mutual)
    score = getattr(matches, rank_by)
    order = np.argsort(-score, kind='stable')
    if top_k is not None:
        order = order[:top_k]
    return matches.select(order)


# ---------------------------------------------------------------------- foreground
def patch_fraction(mask: np.ndarray, grid: Tuple[int, int]) -> np.ndarray:
    """Fraction of each patch covered by a pixel mask ((H, W) bool / 0-1 array)."""
    m = torch.from_numpy(np.asarray(mask, dtype=np.float32))
    if m.ndim != 2:
        raise ValueError(f'Masks must be (H, W) arrays, got shape {tuple(m.shape)}.')
    # 'area' interpolation is an adaptive average pool, exact for non-integer ratios.
    return F.interpolate(m[None, None], size=grid, mode='area')[0, 0].numpy()


def patch_labels_from_mask(mask: np.ndarray, grid: Tuple[int, int],
                           low: float = 0.01, high: float = 0.99) -> np.ndarray:
    """Confident per-patch labels: 1 (covered > ``high``), 0 (< ``low``), -1 (mixed).

    Mixed patches straddle the object boundary; leaving them out of training is what
    the DINOv3 foreground notebook does.
    """
    frac = patch_fraction(mask, grid)
    labels = np.full(grid, -1, dtype=np.int64)
    labels[frac > high] = 1
    labels[frac < low] = 0
    return labels


class ForegroundClassifier:
    """Logistic regression on patch features -> foreground probability.

    Args:
        C (float): Inverse regularisation strength of scikit-learn's
            ``LogisticRegression``. Defaults to 0.1 (the value the DINOv3 notebook
            selects by cross-validation).
        max_iter (int): Solver iterations. Defaults to 1000.
        normalize (bool): L2-normalise features first. Off by default, like the
            notebook; with it, the logits shrink with the feature norm, so raise ``C``.
            Defaults to False.
    """

    def __init__(self, C: float = 0.1, max_iter: int = 1000, normalize: bool = False) -> None:
        from sklearn.linear_model import LogisticRegression
        self.normalize = normalize
        self.model = LogisticRegression(C=C, max_iter=max_iter, random_state=0)

    def _prep(self, feats: torch.Tensor) -> np.ndarray:
        x = feats.reshape(-1, feats.shape[-1]).float()
        if self.normalize:
            x = F.normalize(x, dim=-1)
        return x.numpy().astype(np.float64)

    def fit(self, features: Sequence[Grid], labels: Sequence[np.ndarray]
            ) -> 'ForegroundClassifier':
        """Fit on grids and per-patch labels (1 fg, 0 bg, -1 ignored).

        Args:
            features (Sequence[Grid]): (rows, cols, D) grids.
            labels (Sequence[np.ndarray]): (rows, cols) int labels, one per grid.

        Returns:
            ForegroundClassifier: self.
        """
        xs, ys = [], []
        for i, (f, y) in enumerate(zip(features, labels)):
            g = _as_grid(f, f'features[{i}]')
            y = np.asarray(y).reshape(-1)
            if y.size != g.shape[0] * g.shape[1]:
                raise ValueError(f'labels[{i}] has {y.size} entries for a '
                                 f'{g.shape[0]}x{g.shape[1]} patch grid.')
            sel = y >= 0
            xs.append(self._prep(g)[sel])
            ys.append(y[sel])
        y = np.concatenate(ys)
        if len(np.unique(y)) < 2:
            raise ValueError('Foreground training needs labelled patches of both classes '
                             f'(got only class {np.unique(y).tolist()}); label some '
                             'background and some foreground.')
        self.model.fit(np.concatenate(xs), y)
        return self

    def predict_proba(self, features: Grid) -> np.ndarray:
        """(rows, cols) foreground probabilities."""
        g = _as_grid(features)
        prob = self.model.predict_proba(self._prep(g))[:, list(self.model.classes_).index(1)]
        return prob.reshape(g.shape[0], g.shape[1]).astype(np.float32)


def foreground_probability(classifier: ForegroundClassifier, features: Grid,
                           image_size: Optional[Tuple[int, int]] = None,
                           median_size: int = 3) -> np.ndarray:
    """Per-patch foreground probability, smoothed and optionally upsampled to pixels.

    Args:
        classifier (ForegroundClassifier): A fitted classifier.
        features (Grid): (rows, cols, D) grid.
        image_size (tuple[int, int], optional): (H, W) to upsample to (bilinear).
        median_size (int): Median filter size on the patch map (0/1 = off); removes
            isolated wrong patches as in the DINOv3 notebook. Defaults to 3.

    Returns:
        np.ndarray: (rows, cols) or (H, W) float map in [0, 1].
    """
    from .image_io import upsample_map
    prob = classifier.predict_proba(features)
    if median_size and median_size > 1:
        from scipy.ndimage import median_filter
        prob = median_filter(prob, size=median_size, mode='nearest')
    if image_size is not None:
        prob = np.clip(upsample_map(prob, *image_size), 0, 1)
    return prob


# --------------------------------------------------------------- label propagation
def labels_to_patches(mask: np.ndarray, grid: Tuple[int, int],
                      num_classes: Optional[int] = None) -> np.ndarray:
    """One-hot patch labels (rows, cols, C) from an (H, W) integer label image.

    Each patch takes the label of the pixel at its centre (nearest-neighbour
    downsampling, as the DINO DAVIS evaluation resizes first-frame annotations).
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f'Label images must be (H, W) integer arrays, got {m.shape}.')
    height, width = m.shape
    rows, cols = grid
    ys = np.minimum(((np.arange(rows) + 0.5) * height / rows).astype(int), height - 1)
    xs = np.minimum(((np.arange(cols) + 0.5) * width / cols).astype(int), width - 1)
    small = m[ys[:, None], xs[None, :]].astype(np.int64)
    if small.min() < 0:
        raise ValueError('Label images must hold non-negative class indices.')
    num_classes = int(num_classes or m.max() + 1)
    return np.eye(num_classes, dtype=np.float32)[small]


def neighborhood_mask(grid: Tuple[int, int], radius: int) -> torch.Tensor:
    """(N, N) bool: target patch i may read source patch j if both lie within
    ``radius`` patches of each other along rows *and* columns (a square window)."""
    rows, cols = grid
    r = torch.arange(rows).repeat_interleave(cols)
    c = torch.arange(cols).repeat(rows)
    return ((r[:, None] - r[None]).abs() <= radius) & ((c[:, None] - c[None]).abs() <= radius)


def propagate_labels(frame_features: Sequence[Grid], first_labels: np.ndarray,
                     n_last_frames: int = 7, topk: int = 5, temperature: float = 0.1,
                     size_mask_neighborhood: int = 12) -> List[np.ndarray]:
    """Propagate first-frame labels through a video (DINO / DINOv2 DAVIS recipe).

    For each frame t, the context is the first frame (ground-truth labels) plus the
    ``n_last_frames`` previous frames (their *predicted* soft labels). Each target
    patch looks at context patches within ``size_mask_neighborhood`` patches of its own
    position, keeps the ``topk`` most similar (cosine) over all context frames jointly,
    and averages their labels with weights ``softmax(similarity / temperature)``.

    Args:
        frame_features (Sequence[Grid]): T grids (rows, cols, D) of one size.
        first_labels (np.ndarray): (rows, cols, C) soft / one-hot labels of frame 0
            (see :func:`labels_to_patches`).
        n_last_frames (int): Previous frames in the context. Defaults to 7.
        topk (int): Neighbours per target patch. Defaults to 5.
        temperature (float): Softmax temperature. Defaults to 0.1.
        size_mask_neighborhood (int): Spatial radius in patches; 0 disables the
            restriction. Defaults to 12.

    Returns:
        list[np.ndarray]: T soft label grids (rows, cols, C); entry 0 is the input.
    """
    grids = [F.normalize(_as_grid(f, f'frame_features[{i}]'), dim=-1)
             for i, f in enumerate(frame_features)]
    shapes = {tuple(g.shape) for g in grids}
    if len(shapes) != 1:
        raise ValueError(f'All frames must have the same feature grid, got {sorted(shapes)}.')
    rows, cols, dim = grids[0].shape
    labels0 = torch.as_tensor(np.asarray(first_labels, dtype=np.float32))
    if labels0.ndim != 3 or tuple(labels0.shape[:2]) != (rows, cols):
        raise ValueError(f'first_labels must have shape ({rows}, {cols}, C), got '
                         f'{tuple(labels0.shape)}.')
    n = rows * cols
    allowed = (neighborhood_mask((rows, cols), size_mask_neighborhood)
               if size_mask_neighborhood > 0 else torch.ones(n, n, dtype=torch.bool))
    flat = [g.reshape(n, dim) for g in grids]
    predicted = [labels0.reshape(n, -1)]
    for t in range(1, len(grids)):
        context = [0] + list(range(max(1, t - n_last_frames), t))
        keys = torch.stack([flat[c] for c in context])  # (K, n, D)
        values = torch.cat([predicted[c] for c in context])  # (K * n, C)
        logits = torch.einsum('td,ksd->tks', flat[t], keys) / temperature
        logits = logits.masked_fill(~allowed[:, None, :], float('-inf')).reshape(n, -1)
        k = min(topk, logits.shape[1])
        top = logits.topk(k, dim=1)
        weights = torch.softmax(top.values, dim=1)
        # A -inf neighbour (fewer than k allowed sources) has weight exactly 0.
        weights = torch.nan_to_num(weights, nan=0.0)
        predicted.append((weights[..., None] * values[top.indices]).sum(1))
    return [p.reshape(rows, cols, -1).numpy() for p in predicted]


def labels_to_mask(soft_labels: np.ndarray, image_size: Tuple[int, int],
                   norm_per_class: bool = True) -> np.ndarray:
    """Upsample soft patch labels (rows, cols, C) bilinearly and take the arg-max.

    Args:
        soft_labels (np.ndarray): (rows, cols, C).
        image_size (tuple[int, int]): (H, W).
        norm_per_class (bool): Min-max normalise each class map before the arg-max, as
            the DINO DAVIS evaluation does; it keeps small objects whose scores never
            reach those of the background. Defaults to True.

    Returns:
        np.ndarray: (H, W) int64 label image.
    """
    from .image_io import upsample_map
    up = upsample_map(soft_labels, *image_size)
    if norm_per_class:
        lo = up.min(axis=(0, 1), keepdims=True)
        hi = up.max(axis=(0, 1), keepdims=True)
        scale = np.where(hi > 0, hi - lo, 1.0)
        up = np.where(hi > 0, (up - lo) / np.maximum(scale, 1e-12), up)
    return up.argmax(-1)
