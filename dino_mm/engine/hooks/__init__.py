# Owned by the area that fills it; keep imports sorted.
from .gram_hooks import GramTeacherRefreshHook
from .parent_watch import ParentProcessWatchHook
from .stage_hooks import StageCheckpointHook
from .teacher_hooks import LossWeightScheduleHook, TeacherMomentumHook, TeacherTempHook

__all__ = [
    'GramTeacherRefreshHook', 'LossWeightScheduleHook', 'ParentProcessWatchHook',
    'StageCheckpointHook', 'TeacherMomentumHook', 'TeacherTempHook'
]
