"""L2-regularised logistic regression on frozen features (docs/reference.md §5.4).

The official evaluation sweeps the inverse regularisation strength ``C`` over
``10 ** linspace(-6, 5, 45)`` with an L-BFGS solver (``tol=1e-12``), picks the best C on
a held-out set and refits. Here scikit-learn's L-BFGS runs on CPU in float64; RAPIDS
cuML is used instead when it is importable and ``backend`` allows it. In a distributed
run the C values are split over ranks and the results shared.

Selection (``select_on``):

* ``'holdout'`` (official default): C is chosen on a seeded random 10% of the training
  set (trained on the other 90%), then the model is refit on the whole training set and
  evaluated on the validation set;
* ``'val'``: C is chosen directly on the validation set (the official
  ``--finetune-on-val``) and that model's validation accuracy is reported.
"""
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine import dist

from dino_mm.registry import METRICS

from .metrics import TrainFeatureMetric, accuracy_topk

#: The official C grid: 45 values from 1e-6 to 1e5.
OFFICIAL_C_GRID = tuple(float(c) for c in 10.0**np.linspace(-6, 5, 45))


def _cuml_available() -> bool:
    try:
        import cuml  # noqa: F401
    except ImportError:
        return False
    return True


def fit_logistic_regression(features: np.ndarray,
                            labels: np.ndarray,
                            C: float,
                            max_iter: int = 1000,
                            tol: float = 1e-12,
                            backend: str = 'auto'):
    """Fit one L2 logistic regression (multinomial, L-BFGS).

    Args:
        features (np.ndarray): ``(N, D)`` training features (converted to float64).
        labels (np.ndarray): ``(N,)`` class indices.
        C (float): Inverse regularisation strength.
        max_iter (int): L-BFGS iterations. Defaults to 1000 (official).
        tol (float): Solver tolerance. Defaults to 1e-12 (official), which in practice
            runs until ``max_iter``.
        backend (str): ``'sklearn'``, ``'cuml'`` or ``'auto'`` (cuML when importable).
            Defaults to 'auto'.

    Returns:
        The fitted estimator (``predict_proba`` / ``decision_function`` available).
    """
    if backend not in ('auto', 'sklearn', 'cuml'):
        raise ValueError(f"backend must be 'auto', 'sklearn' or 'cuml', got {backend!r}")
    use_cuml = backend == 'cuml' or (backend == 'auto' and _cuml_available())
    if use_cuml:
        from cuml.linear_model import LogisticRegression as CuLogisticRegression
        clf = CuLogisticRegression(penalty='l2', C=C, max_iter=max_iter, tol=tol,
                                   linesearch_max_iter=50)
        return clf.fit(features.astype(np.float64), labels)
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    clf = LogisticRegression(C=C, solver='lbfgs', max_iter=max_iter, tol=tol)
    with warnings.catch_warnings():
        # tol=1e-12 is reached essentially never; hitting max_iter is the protocol.
        warnings.simplefilter('ignore', ConvergenceWarning)
        clf.fit(features.astype(np.float64), labels)
    return clf


def _scores(clf, features: np.ndarray, num_classes: int) -> torch.Tensor:
    """Class scores with one column per class index, even for classes absent in training."""
    proba = np.asarray(clf.predict_proba(features.astype(np.float64)))
    scores = np.full((features.shape[0], num_classes), -1.0)
    scores[:, np.asarray(clf.classes_).astype(int)] = proba
    return torch.from_numpy(scores)


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def eval_log_regression(train_features,
                        train_labels,
                        val_features,
                        val_labels,
                        Cs: Optional[Sequence[float]] = None,
                        max_iter: int = 1000,
                        tol: float = 1e-12,
                        select_on: str = 'holdout',
                        holdout_fraction: float = 0.1,
                        seed: int = 0,
                        topk: Sequence[int] = (1, 5),
                        backend: str = 'auto',
                        distribute_cs: bool = True) -> Dict[str, float]:
    """Sweep C, pick the best, refit and report validation accuracy.

    Args:
        train_features, train_labels: ``(N, D)`` / ``(N,)`` tensors or arrays.
        val_features, val_labels: ``(M, D)`` / ``(M,)``.
        Cs (sequence of float, optional): C grid. Defaults to :data:`OFFICIAL_C_GRID`.
        max_iter (int): L-BFGS iterations per fit. Defaults to 1000.
        tol (float): Solver tolerance. Defaults to 1e-12.
        select_on (str): ``'holdout'`` or ``'val'`` (see the module docstring).
            Defaults to 'holdout'.
        holdout_fraction (float): Share of the training set held out for choosing C.
            Defaults to 0.1.
        seed (int): Seed of the hold-out permutation. Defaults to 0.
        topk (sequence of int): Reported accuracies. Defaults to (1, 5).
        backend (str): See :func:`fit_logistic_regression`. Defaults to 'auto'.
        distribute_cs (bool): Split the C grid over ranks in a distributed run.
            Defaults to True.

    Returns:
        dict: ``best_C``, ``top{k}`` (validation, percent) and ``sweep/C_{C:.3g}_top1``
        (selection accuracy of every C).
    """
    if select_on not in ('holdout', 'val'):
        raise ValueError(f"select_on must be 'holdout' or 'val', got {select_on!r}")
    Cs = list(OFFICIAL_C_GRID if Cs is None else Cs)
    if not Cs:
        raise ValueError('the C grid is empty')
    x_train, y_train = _to_numpy(train_features), _to_numpy(train_labels).astype(int)
    x_val, y_val = _to_numpy(val_features), _to_numpy(val_labels).astype(int)
    num_classes = int(max(y_train.max(), y_val.max())) + 1

    if select_on == 'holdout':
        perm = np.random.default_rng(seed).permutation(len(x_train))
        n_hold = max(1, int(len(x_train) * holdout_fraction))
        hold, fit = perm[:n_hold], perm[n_hold:]
        x_fit, y_fit, x_sel, y_sel = x_train[fit], y_train[fit], x_train[hold], y_train[hold]
    else:
        x_fit, y_fit, x_sel, y_sel = x_train, y_train, x_val, y_val

    world, rank = (dist.get_world_size(), dist.get_rank()) if distribute_cs else (1, 0)
    local = {}
    for i in range(rank, len(Cs), world):
        clf = fit_logistic_regression(x_fit, y_fit, Cs[i], max_iter, tol, backend)
        local[i] = (accuracy_topk(_scores(clf, x_sel, num_classes), torch.from_numpy(y_sel),
                                  (1, ))[0], clf)
    sweep = {i: acc for i, (acc, _) in local.items()}
    if world > 1:
        merged = {}
        for part in dist.all_gather_object(sweep):
            merged.update(part)
        sweep = merged
    # Ties go to the smallest C (strongest regularisation), deterministically on all ranks.
    best_i = max(range(len(Cs)), key=lambda i: (sweep[i], -i))
    best_c = Cs[best_i]

    if select_on == 'holdout':
        clf = fit_logistic_regression(x_train, y_train, best_c, max_iter, tol, backend)
    elif best_i in local:
        clf = local[best_i][1]
    else:
        clf = fit_logistic_regression(x_fit, y_fit, best_c, max_iter, tol, backend)
    accs = accuracy_topk(_scores(clf, x_val, num_classes), torch.from_numpy(y_val), topk)
    results: Dict[str, float] = {'best_C': float(best_c)}
    results.update({f'top{k}': acc for k, acc in zip(topk, accs)})
    results.update({f'sweep/C_{Cs[i]:.3g}_top1': sweep[i] for i in range(len(Cs))})
    return results


@METRICS.register_module()
class LogisticRegressionMetric(TrainFeatureMetric):
    """Logistic-regression accuracy of test features, trained on features set by the loop.

    Args:
        Cs (sequence of float, optional): C grid. Defaults to the official 45 values.
        max_iter (int): L-BFGS iterations. Defaults to 1000.
        tol (float): Solver tolerance. Defaults to 1e-12.
        select_on (str): 'holdout' (official) or 'val'. Defaults to 'holdout'.
        holdout_fraction (float): Defaults to 0.1.
        topk (sequence of int): Defaults to (1, 5).
        backend (str): 'auto', 'sklearn' or 'cuml'. Defaults to 'auto'.
        log_sweep (bool): Also report the selection accuracy of every C.
            Defaults to False.
        collect_device (str): Defaults to 'cpu'.
        prefix (str, optional): Defaults to 'logreg'.
    """
    default_prefix = 'logreg'

    def __init__(self,
                 Cs: Optional[Sequence[float]] = None,
                 max_iter: int = 1000,
                 tol: float = 1e-12,
                 select_on: str = 'holdout',
                 holdout_fraction: float = 0.1,
                 topk: Sequence[int] = (1, 5),
                 backend: str = 'auto',
                 log_sweep: bool = False,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.kwargs = dict(Cs=None if Cs is None else list(Cs), max_iter=max_iter, tol=tol,
                           select_on=select_on, holdout_fraction=holdout_fraction,
                           topk=tuple(topk), backend=backend)
        self.log_sweep = log_sweep


    def compute_metrics(self, results: List[dict], distribute_cs: bool = False
                        ) -> Dict[str, float]:
        """Sweep C and evaluate (with ``distribute_cs``, this rank's share of the grid)."""
        val_features, val_labels = self.stacked_results(results)
        out = eval_log_regression(self.train_features, self.train_labels, val_features,
                                  val_labels, distribute_cs=distribute_cs, **self.kwargs)
        if not self.log_sweep:
            out = {k: v for k, v in out.items() if not k.startswith('sweep/')}
        return out

    def evaluate(self, size: int) -> Dict[str, float]:
        """Spread the C sweep over the ranks of a distributed run.

        MMEngine's ``BaseMetric.evaluate`` computes on rank 0 while the other ranks wait,
        so the 45 L-BFGS fits of the official grid would run one after the other. Here the
        test results are collected, shared with every rank (the training features already
        are, by the loop), every rank fits its share of the C grid, the selection
        accuracies are all-gathered, and all ranks agree on the best C; rank 0's metrics
        are returned on every rank, as MMEngine does.
        """
        if dist.get_world_size() == 1:
            return super().evaluate(size)
        from mmengine.dist import broadcast_object_list, collect_results
        if not self.results:
            warnings.warn(f'{type(self).__name__} got empty `self.results` on rank '
                          f'{dist.get_rank()}.')
        results = collect_results(self.results, size, self.collect_device)
        shared = [results]
        broadcast_object_list(shared)
        metrics = self.compute_metrics(shared[0], distribute_cs=True)
        if self.prefix:
            metrics = {f'{self.prefix}/{k}': v for k, v in metrics.items()}
        out = [metrics]
        broadcast_object_list(out)
        self.results.clear()
        return out[0]


__all__ = ['OFFICIAL_C_GRID', 'fit_logistic_regression', 'eval_log_regression',
           'LogisticRegressionMetric']
