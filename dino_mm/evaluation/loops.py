"""MMEngine glue for feature-based evaluation (k-NN, logistic regression).

``tools/test.py CONFIG CHECKPOINT`` runs ``Runner.test()``; with
``test_cfg=dict(type='dino_mm.FeatureEvalTestLoop', train_dataloader=...)`` the loop
first extracts the training-set features (optionally cached on disk), hands them to
every metric that accepts them (:class:`~dino_mm.evaluation.KNNMetric`,
:class:`~dino_mm.evaluation.LogisticRegressionMetric`), then runs the ordinary test
pass over ``test_dataloader`` whose predictions carry one ``feature`` per sample.
"""
import os.path as osp
from typing import Dict, List, Optional, Union

import torch
from mmengine.evaluator import Evaluator
from mmengine.logging import print_log
from mmengine.model import BaseModel
from mmengine.runner import TestLoop
from mmengine.runner.amp import autocast
from torch import nn
from torch.utils.data import DataLoader

from dino_mm.models.backbones.utils import FrozenBackboneEvalMixin
from dino_mm.registry import LOOPS, MODELS
from dino_mm.utils.precision import check_precision, precision_autocast

from .feature_extraction import extract_features, parse_data_samples


@MODELS.register_module()
class FrozenFeatureModel(FrozenBackboneEvalMixin, BaseModel):
    """Wrap a backbone so that MMEngine can run it for feature evaluation.

    Args:
        backbone (dict | nn.Module): Backbone config or module; ``backbone(x)`` must
            return ``(B, D)`` features (the DINO backbones return the normalised class
            token by default). Its ``init_cfg=dict(type='Pretrained', checkpoint=...)``
            loads an official-layout file.
        precision (str): Precision of the backbone forward: ``'auto'`` (bf16 on a CPU
            with native bf16 and on CUDA, else fp32), ``'fp32'``, ``'bf16'`` or
            ``'fp16'`` (CUDA; the official DINOv2 evaluations run fp16 on GPUs); see
            :mod:`dino_mm.utils.precision`. The choice is logged once; features are cast
            to fp32 after the backbone either way. Defaults to 'auto'.
        backbone_checkpoint (str, optional): Official-layout backbone file (or a
            training checkpoint with a 'backbone.' prefix), loaded strictly at
            construction. A file exported by ``tools/convert/pretrain_to_backbone.py``
            records its architecture, which replaces ``backbone``'s architecture
            arguments. Defaults to None.
        data_preprocessor (dict, optional): E.g. ``dict(type='ImgDataPreprocessor', ...)``.
        init_cfg (dict, optional): MMEngine init config.
    """

    def __init__(self,
                 backbone: Union[dict, nn.Module],
                 precision: str = 'auto',
                 backbone_checkpoint: Optional[str] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self._init_frozen_backbone(backbone, backbone_checkpoint)
        self.precision = check_precision(precision, f'{type(self).__name__}: precision')

    @torch.no_grad()
    def extract_feat(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return ``(B, D)`` float32 features (the backbone runs in ``self.precision``)."""
        with precision_autocast(self.precision, inputs.device, owner=type(self).__name__):
            feats = self.backbone(inputs)
        if isinstance(feats, (tuple, list)):
            feats = feats[-1]
        if feats.ndim != 2:
            raise ValueError(f'the backbone returned features of shape {tuple(feats.shape)}; '
                             "feature evaluation needs (B, D) (use out_type='cls')")
        return feats.float()

    def forward(self, inputs: torch.Tensor, data_samples: Optional[list] = None,
                mode: str = 'tensor'):
        """``'tensor'`` -> features; ``'predict'`` -> one dict per sample with ``feature``,
        ``gt_label`` and ``sample_idx``."""
        feats = self.extract_feat(inputs)
        if mode == 'tensor':
            return feats
        if mode == 'predict':
            labels, indices = parse_data_samples(data_samples or [])
            if indices is None:
                indices = torch.full_like(labels, -1)
            return [dict(feature=f, gt_label=int(y), sample_idx=int(i))
                    for f, y, i in zip(feats.cpu(), labels, indices)]
        raise ValueError(f"FrozenFeatureModel has no loss; mode must be 'tensor' or "
                         f"'predict', got {mode!r}")


@LOOPS.register_module()
class FeatureEvalTestLoop(TestLoop):
    """Test loop that first extracts training features for k-NN / logistic regression.

    Args:
        runner: The runner.
        dataloader (DataLoader | dict): The evaluation (validation) loader.
        evaluator (Evaluator | dict | list): Metrics; those with
            ``set_train_features`` receive the training features.
        train_dataloader (DataLoader | dict, optional): Loader over the training set
            (use ``DefaultSampler(shuffle=False)``). Defaults to the runner's
            ``train_dataloader`` config.
        cache_dir (str, optional): Cache folder for the training features; relative
            paths are under the work dir. Defaults to None (no cache).
        cache_name (str, optional): Name of the cached feature set. Defaults to
            ``'train_features'``.
        fp16 (bool): Mixed precision as in MMEngine's :class:`TestLoop` (fp16 autocast on
            CUDA, bf16 on CPU; ``tools/test.py --amp`` sets it), applied to the training
            features too, so both sides of the comparison are computed alike. A model's
            own ``precision`` decides inside its backbone. Defaults to False.
    """

    def __init__(self,
                 runner,
                 dataloader: Union[DataLoader, Dict],
                 evaluator: Union[Evaluator, Dict, List],
                 train_dataloader: Optional[Union[DataLoader, Dict]] = None,
                 cache_dir: Optional[str] = None,
                 cache_name: Optional[str] = None,
                 fp16: bool = False) -> None:
        super().__init__(runner, dataloader, evaluator, fp16=fp16)
        if train_dataloader is None:
            train_dataloader = getattr(runner, '_train_dataloader', None)
        if train_dataloader is None:
            raise ValueError('FeatureEvalTestLoop needs training data: set '
                             'test_cfg.train_dataloader (or train_dataloader in the config)')
        if isinstance(train_dataloader, dict):
            train_dataloader = runner.build_dataloader(train_dataloader,
                                                       seed=runner.seed)
        self.train_dataloader = train_dataloader
        if cache_dir is not None and not osp.isabs(cache_dir):
            cache_dir = osp.join(runner.work_dir, cache_dir)
        self.cache_dir = cache_dir
        self.cache_name = cache_name or 'train_features'

    def run(self) -> dict:
        """Extract training features, give them to the metrics, then run the test pass."""
        self.runner.model.eval()
        print_log(f'extracting features of {len(self.train_dataloader.dataset)} training '
                  'samples', logger='current')
        with autocast(enabled=self.fp16):  # what TestLoop.run_iter does for the test pass
            feats, labels = extract_features(self.runner.model, self.train_dataloader,
                                             cache_dir=self.cache_dir,
                                             cache_name=self.cache_name)
        if (labels < 0).any():
            raise ValueError('some training samples have no gt_label; k-NN and logistic '
                             'regression need a labelled training set')
        receivers = [m for m in self.evaluator.metrics if hasattr(m, 'set_train_features')]
        if not receivers:
            raise ValueError('FeatureEvalTestLoop found no metric that accepts training '
                             'features; use dino_mm.KNNMetric or '
                             'dino_mm.LogisticRegressionMetric in test_evaluator')
        for metric in receivers:
            metric.set_train_features(feats, labels)
        return super().run()


__all__ = ['FrozenFeatureModel', 'FeatureEvalTestLoop']
