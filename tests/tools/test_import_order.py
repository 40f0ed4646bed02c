"""A user's own script imports the OpenMMLab APIs first, without ``import dino_mm``."""
import subprocess
import sys

import pytest

SCRIPT = '''
import sys
import mmpretrain.models  # noqa: F401
assert 'dino_mm' not in sys.modules, 'the check must not depend on dino_mm being imported'
import mmpretrain.utils.dependency as dep
print('WITH_MULTIMODAL', dep.WITH_MULTIMODAL)
'''


@pytest.mark.parametrize('api', ['mmseg', 'mmdet', 'mmpretrain'])
def test_mm_apis_import_before_dino_mm(api, tmp_path):
    # Each API as the first import of a fresh process, as in a user's script.
    first = {'mmseg': 'from mmseg.apis import MMSegInferencer, init_model, inference_model',
             'mmdet': 'from mmdet.apis import DetInferencer, init_detector',
             'mmpretrain': 'from mmpretrain import FeatureExtractor, get_model'}[api]
    proc = subprocess.run([sys.executable, '-c', first + '\n' + SCRIPT], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert 'WITH_MULTIMODAL False' in proc.stdout


def test_startup_hook_is_the_package_module():
    """The copy in site-packages is the file the package ships (setup_env keeps it fresh)."""
    import importlib.util
    import inspect

    import dino_mm.utils.startup_hook as pkg_hook
    spec = importlib.util.find_spec('_dino_mm_startup')
    assert spec is not None, ('the start-up hook is not installed in this environment: run '
                              'bash tools/setup_env.sh')
    with open(spec.origin) as f:
        assert f.read() == inspect.getsource(pkg_hook)
