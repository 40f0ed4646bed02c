# Owned by the area that fills it; keep imports sorted.
from .teacher_hooks import TeacherMomentumHook, TeacherTempHook

__all__ = ['TeacherMomentumHook', 'TeacherTempHook']
