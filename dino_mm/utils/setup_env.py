import datetime
import warnings

from mmengine import DefaultScope


def register_all_modules(init_default_scope: bool = True) -> None:
    """Import every dino_mm module so that all registries are filled.

    Args:
        init_default_scope (bool): Whether to set ``dino_mm`` as the default scope
            (MMEngine convention, as in ``mmseg.utils.register_all_modules``).
            Defaults to True.
    """
    import dino_mm.apis  # noqa: F401
    import dino_mm.datasets  # noqa: F401
    import dino_mm.datasets.depth  # noqa: F401
    import dino_mm.datasets.detection  # noqa: F401
    import dino_mm.datasets.segmentation  # noqa: F401
    import dino_mm.engine  # noqa: F401
    import dino_mm.evaluation  # noqa: F401
    import dino_mm.hub  # noqa: F401
    import dino_mm.models  # noqa: F401
    import dino_mm.models.depth  # noqa: F401
    import dino_mm.models.detection  # noqa: F401
    import dino_mm.models.segmentation  # noqa: F401
    import dino_mm.visualization  # noqa: F401

    if init_default_scope:
        never_created = (DefaultScope.get_current_instance() is None
                         or not DefaultScope.check_instance_created('dino_mm'))
        if never_created:
            DefaultScope.get_instance('dino_mm', scope_name='dino_mm')
            return
        current_scope = DefaultScope.get_current_instance()
        if current_scope.scope_name != 'dino_mm':
            warnings.warn('The current default scope '
                          f'"{current_scope.scope_name}" is not "dino_mm", '
                          '`register_all_modules` will force the current '
                          'default scope to be "dino_mm". If this is not '
                          'expected, please set `init_default_scope=False`.')
            new_instance_name = f'dino_mm-{datetime.datetime.now()}'
            DefaultScope.get_instance(new_instance_name, scope_name='dino_mm')
