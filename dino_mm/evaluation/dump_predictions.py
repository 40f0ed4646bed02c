"""Pickle the per-sample predictions of a test run (``tools/test.py --out FILE.pkl``)."""
from typing import Any, Optional, Sequence

from mmengine.evaluator import DumpResults

from dino_mm.registry import METRICS

__all__ = ['DumpPredictions', 'DEFAULT_DROP_KEYS']

# Per-sample fields that are not predictions, or too large to keep for a whole test set:
# dense / instance ground truth (it is in the dataset already), and mmseg's `seg_logits`,
# the class scores of every pixel (150 classes x 512 x 683 float32 are about 200 MB for a
# single ADE20K image). `pred_sem_seg` / `pred_depth_map` / `pred_instances` are kept.
DEFAULT_DROP_KEYS = ('seg_logits', 'gt_sem_seg', 'gt_depth_map', 'gt_instances',
                     'ignored_instances', 'gt_panoptic_seg')


@METRICS.register_module()
class DumpPredictions(DumpResults):
    """MMEngine's ``DumpResults`` that leaves ground truth and dense class scores out.

    The file holds one entry (a dict: meta information and the ``pred_*`` fields) per test
    sample, in dataset order, and is read back with ``mmengine.load``. Like every MMEngine
    metric it gathers the samples of all ranks; rank 0 writes the file.

    Args:
        out_file_path (str): The ``.pkl`` / ``.pickle`` file to write.
        drop_keys (Sequence[str]): Per-sample keys left out. Defaults to
            :data:`DEFAULT_DROP_KEYS`.
        collect_device (str): 'cpu' or 'gpu', to gather results across ranks.
            Defaults to 'cpu'.
        collect_dir (str, optional): Folder for the CPU gathering. Defaults to None.
    """

    def __init__(self,
                 out_file_path: str,
                 drop_keys: Sequence[str] = DEFAULT_DROP_KEYS,
                 collect_device: str = 'cpu',
                 collect_dir: Optional[str] = None) -> None:
        if not str(out_file_path).endswith(('.pkl', '.pickle')):
            raise ValueError(f'DumpPredictions: out_file_path={out_file_path!r} must end '
                             'with .pkl or .pickle (predictions are pickled).')
        super().__init__(out_file_path=str(out_file_path), collect_device=collect_device,
                         collect_dir=collect_dir)
        self.drop_keys = tuple(drop_keys)

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Keep each sample's predictions and meta information (moved to the CPU)."""
        kept = [{k: v for k, v in sample.items() if k not in self.drop_keys}
                if isinstance(sample, dict) else sample for sample in data_samples]
        super().process(data_batch, kept)
