# Owned by the area that fills it; keep imports sorted.
from .gram_hooks import GramTeacherRefreshHook, LossWeightScheduleHook, StageCheckpointHook
from .parent_watch import ParentProcessWatchHook
from .teacher_hooks import TeacherMomentumHook, TeacherTempHook

__all__ = [
    'GramTeacherRefreshHook', 'LossWeightScheduleHook', 'ParentProcessWatchHook',
    'StageCheckpointHook', 'TeacherMomentumHook', 'TeacherTempHook'
]
