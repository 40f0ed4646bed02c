"""Linear-probe grid: many linear classifiers trained in one pass over frozen features.

As in the official protocol (docs/reference.md §5.3), every combination of learning rate, number of
last blocks (class tokens concatenated) and average pooling of the last block's patch
tokens gets its own ``nn.Linear``; all of them are trained together from the same
backbone features of each batch (one backbone forward per step), each in its own
optimizer parameter group, and the best one on the validation set is reported.

Usage through MMEngine (see ``configs/eval/linear``):

* ``model=dict(type='dino_mm.LinearProbeGrid', backbone=..., batch_size_per_gpu=128)``;
* ``optim_wrapper=dict(optimizer=dict(type='SGD', lr=1.0, momentum=0.9, weight_decay=0),
  constructor='dino_mm.LinearProbeOptimWrapperConstructor')`` (the per-classifier
  learning rates come from the model, ``lr`` in the optimizer config is ignored);
* ``val_evaluator=dict(type='dino_mm.LinearProbeMetric')``.
"""
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmengine import dist
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmengine.model import BaseModel, is_model_wrapper
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from torch import nn

from dino_mm.models.backbones.utils import FrozenBackboneEvalMixin
from dino_mm.models.heads.linear import create_linear_input
from dino_mm.registry import (METRICS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS,
                              OPTIMIZERS)
from dino_mm.utils.precision import check_precision, precision_autocast

from .feature_extraction import parse_data_samples

#: The 13 official learning rates (before scaling by batch size / 256).
OFFICIAL_LEARNING_RATES = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2,
                           5e-2, 0.1)


def classifier_name(n_blocks: int, avgpool: bool, lr: float, decimals: int = 5) -> str:
    """Official classifier name, e.g. ``classifier_4_blocks_avgpool_True_lr_0_00050``.

    ``decimals`` > 5 is only used when scaled learning rates collide at 5 decimals
    (upstream then silently overwrote classifiers; e.g. batch 128 on one GPU scales
    1e-5 and 2e-5 to 5e-6 and 1e-5, both named ``lr_0_00001``).
    """
    return f'classifier_{n_blocks}_blocks_avgpool_{avgpool}_lr_{lr:.{decimals}f}'.replace(
        '.', '_')


class LinearClassifier(nn.Module):
    """One probe: :func:`create_linear_input` followed by ``nn.Linear``.

    Args:
        in_dim (int): Input width ``(n_blocks + avgpool) * D``.
        use_n_blocks (int): Number of last blocks whose class tokens are used.
        use_avgpool (bool): Whether the mean patch token is appended.
        num_classes (int): Number of classes. Defaults to 1000.
    """

    def __init__(self, in_dim: int, use_n_blocks: int, use_avgpool: bool,
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.use_n_blocks = use_n_blocks
        self.use_avgpool = use_avgpool
        self.linear = nn.Linear(in_dim, num_classes)
        # Official probe init (the nn.Linear default would change the grid's results).
        nn.init.normal_(self.linear.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x_tokens_list) -> torch.Tensor:
        """Logits from ``get_intermediate_layers(..., return_class_token=True)`` output."""
        return self.linear(create_linear_input(x_tokens_list, self.use_n_blocks,
                                               self.use_avgpool))


@MODELS.register_module()
class LinearProbeGrid(FrozenBackboneEvalMixin, BaseModel):
    """A frozen backbone and a grid of linear classifiers trained together.

    Args:
        backbone (dict | nn.Module): Backbone config or module; needs
            ``get_intermediate_layers`` and ``embed_dim``. It is frozen and kept in
            eval mode (a DINOv3 backbone in train mode would jitter its RoPE coordinates).
        num_classes (int): Number of classes. Defaults to 1000.
        n_last_blocks_list (sequence of int): Defaults to (1, 4) (v2; v3 uses (1,)).
        avgpools (sequence of bool): Defaults to (False, True) (v2; v3 uses (True,)).
        learning_rates (sequence of float): Unscaled learning rates. Defaults to the 13
            official values.
        batch_size_per_gpu (int): Training batch size per rank; learning rates are scaled
            by ``batch_size_per_gpu * world_size / base_batch_size``. Defaults to 128.
        base_batch_size (int): Defaults to 256.
        embed_dim (int, optional): Backbone width D; read from ``backbone.embed_dim``
            when None.
        precision (str): Precision of the frozen backbone's forward: ``'auto'`` (bf16 on
            a CPU with native bf16 and on CUDA, else fp32), ``'fp32'``, ``'bf16'`` or
            ``'fp16'`` (CUDA; the official probe runs fp16 on GPUs); see
            :mod:`dino_mm.utils.precision`. The classifiers get the tokens cast to fp32.
            Defaults to 'auto'.
        backbone_checkpoint (str, optional): Official-layout backbone file (or a
            training checkpoint with a 'backbone.' prefix), loaded strictly at
            construction. A file exported by ``tools/convert/pretrain_to_backbone.py``
            records its architecture, which replaces ``backbone``'s architecture
            arguments. Defaults to None.
        data_preprocessor (dict, optional): E.g. ``dict(type='ImgDataPreprocessor',
            mean=..., std=..., bgr_to_rgb=True)``.
        init_cfg (dict, optional): MMEngine init config.
    """

    def __init__(self,
                 backbone: Union[dict, nn.Module],
                 num_classes: int = 1000,
                 n_last_blocks_list: Sequence[int] = (1, 4),
                 avgpools: Sequence[bool] = (False, True),
                 learning_rates: Sequence[float] = OFFICIAL_LEARNING_RATES,
                 batch_size_per_gpu: int = 128,
                 base_batch_size: int = 256,
                 embed_dim: Optional[int] = None,
                 precision: str = 'auto',
                 backbone_checkpoint: Optional[str] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self._init_frozen_backbone(backbone, backbone_checkpoint)
        self.backbone.eval()
        embed_dim = embed_dim or getattr(self.backbone, 'embed_dim', None)
        if embed_dim is None:
            raise ValueError(f'{type(self.backbone).__name__} has no `embed_dim`; pass '
                             'embed_dim=D to LinearProbeGrid')
        self.precision = check_precision(precision, f'{type(self).__name__}: precision')
        self.n_last_blocks = max(n_last_blocks_list)
        scale = batch_size_per_gpu * dist.get_world_size() / base_batch_size
        grid = [(n, avgpool, base_lr * scale) for n in n_last_blocks_list
                for avgpool in avgpools for base_lr in learning_rates]
        decimals = 5
        while len({classifier_name(*g, decimals) for g in grid}) < len(grid):
            decimals += 1
            if decimals > 12:
                raise ValueError(f'duplicate entries in the probe grid: {grid}')
        self.classifiers = nn.ModuleDict()
        self.learning_rates: Dict[str, float] = {}
        for n, avgpool, lr in grid:
            name = classifier_name(n, avgpool, lr, decimals)
            self.classifiers[name] = LinearClassifier(
                (n + int(avgpool)) * embed_dim, n, avgpool, num_classes)
            self.learning_rates[name] = lr

    def param_groups(self) -> List[dict]:
        """One optimizer parameter group per classifier, with its scaled learning rate."""
        return [dict(params=list(clf.parameters()), lr=self.learning_rates[name], name=name)
                for name, clf in self.classifiers.items()]

    @torch.no_grad()
    def extract_feat(self, inputs: torch.Tensor):
        """fp32 ``(patch_tokens, class_token)`` of the last ``max(n_last_blocks_list)``
        blocks (one backbone pass in ``self.precision``)."""
        with precision_autocast(self.precision, inputs.device, owner=type(self).__name__):
            layers = self.backbone.get_intermediate_layers(
                inputs, n=self.n_last_blocks, return_class_token=True)
        return tuple((patch.float(), cls.float()) for patch, cls in layers)

    def forward(self, inputs: torch.Tensor, data_samples: Optional[list] = None,
                mode: str = 'tensor'):
        """MMEngine entry point.

        Args:
            inputs (Tensor): Normalised images ``(B, 3, H, W)``.
            data_samples (list, optional): Samples carrying ``gt_label``.
            mode (str): ``'tensor'`` -> ``{name: logits}``; ``'loss'`` -> summed
                cross-entropy of all classifiers; ``'predict'`` -> one dict per sample
                with ``scores`` ``(num_classifiers, C)``, ``gt_label`` and
                ``classifier_names``.
        """
        feats = self.extract_feat(inputs)
        logits = {name: clf(feats) for name, clf in self.classifiers.items()}
        if mode == 'tensor':
            return logits
        labels, _ = parse_data_samples(data_samples or [])
        if mode == 'loss':
            labels = labels.to(inputs.device)
            # The classifiers share no parameters, so the gradient of the sum is each
            # probe's own gradient: the grid equals training them one by one.
            return dict(loss=sum(F.cross_entropy(v, labels) for v in logits.values()))
        if mode == 'predict':
            names = list(logits)
            scores = torch.stack([logits[n].float() for n in names], dim=1).cpu()
            return [dict(scores=s, gt_label=int(y), classifier_names=names)
                    for s, y in zip(scores, labels)]
        raise ValueError(f"mode must be 'tensor', 'loss' or 'predict', got {mode!r}")


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LinearProbeOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Build the optimizer from :meth:`LinearProbeGrid.param_groups`.

    The optimizer config supplies the type and shared settings (SGD, momentum 0.9,
    weight decay 0); each classifier's learning rate comes from the model.
    """

    def __call__(self, model: nn.Module) -> OptimWrapper:
        module = model.module if is_model_wrapper(model) else model
        if not hasattr(module, 'param_groups'):
            raise TypeError(f'{type(module).__name__} has no param_groups(); '
                            'LinearProbeOptimWrapperConstructor only works with '
                            'dino_mm.LinearProbeGrid')
        optim_wrapper_cfg = self.optim_wrapper_cfg.copy()
        optim_wrapper_cfg.setdefault('type', 'OptimWrapper')
        optimizer_cfg = self.optimizer_cfg.copy()
        optimizer_cfg['params'] = module.param_groups()
        optim_wrapper_cfg['optimizer'] = OPTIMIZERS.build(optimizer_cfg)
        return OPTIM_WRAPPERS.build(optim_wrapper_cfg)


@METRICS.register_module()
class LinearProbeMetric(BaseMetric):
    """Top-k accuracy of every probe of a :class:`LinearProbeGrid`; the best is reported.

    Reported keys: ``top1`` / ``top5`` of the best classifier on this set (the
    official selection), ``best_index`` (its position in the grid) and, when
    ``log_all`` is set, ``{classifier_name}_top1`` for every classifier. The best
    classifier's name is written to the log.

    Args:
        topk (sequence of int): Defaults to (1, 5).
        log_all (bool): Report every classifier's top-1. Defaults to True.
        collect_device (str): Defaults to 'cpu'.
        prefix (str, optional): Defaults to 'linear'.
    """
    default_prefix = 'linear'

    def __init__(self, topk: Sequence[int] = (1, 5), log_all: bool = True,
                 collect_device: str = 'cpu', prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = tuple(topk)
        self.log_all = log_all

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Keep, per sample, which classifiers hit the label within each top-k."""
        for sample in data_samples:
            scores, label = sample['scores'], int(sample['gt_label'])
            max_k = min(max(self.topk), scores.shape[1])
            hits = scores.topk(max_k, dim=1).indices.eq(label)
            self.results.append(dict(
                names=sample['classifier_names'],
                hits={k: hits[:, :min(k, max_k)].any(dim=1) for k in self.topk}))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        """Accuracy per classifier; pick the best top-1."""
        names = results[0]['names']
        acc = {k: torch.stack([r['hits'][k] for r in results]).float().mean(0) * 100.0
               for k in self.topk}
        first = self.topk[0]
        best = int(torch.argmax(acc[first]))
        print_log(f'best classifier: {names[best]} ({first}: {float(acc[first][best]):.3f})',
                  logger='current')
        out = {f'top{k}': float(acc[k][best]) for k in self.topk}
        out['best_index'] = best
        if self.log_all:
            out.update({f'{n}_top{first}': float(acc[first][i]) for i, n in enumerate(names)})
        return out


__all__ = ['OFFICIAL_LEARNING_RATES', 'classifier_name', 'LinearClassifier',
           'LinearProbeGrid', 'LinearProbeOptimWrapperConstructor', 'LinearProbeMetric']
