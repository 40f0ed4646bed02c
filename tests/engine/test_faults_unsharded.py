"""No payload in a single-file checkpoint ever runs, at any entry point that reads one.

Each payload would create a marker file when unpickled (checked by a control test). Every
entry point that takes a checkpoint file must refuse it with an error, and the marker must
never appear. (The sharded counterpart is tests/engine/test_faults_sharded.py.)
"""
import io
import os
import os.path as osp
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


class _Payload:
    """Unpickling this calls ``os.system('touch <marker>')``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


def _write(kind: str, path: str, marker: str) -> None:
    """A file that runs the payload when loaded without restriction."""
    obj = {'state_dict': {'w': torch.zeros(2)}, 'meta': _Payload(marker)}
    if kind == 'torch_zip':  # what torch.save writes (a zip with data.pkl)
        torch.save(obj, path)
    elif kind == 'torch_legacy':  # the pre-1.6 torch format (a bare pickle stream)
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    elif kind in ('pickle_p2', 'pickle_p4'):
        with open(path, 'wb') as f:
            pickle.dump(obj, f, protocol=2 if kind == 'pickle_p2' else 4)
    elif kind == 'zip_data_pkl':  # a hand-made torch-like zip whose data.pkl is the payload
        buf = io.BytesIO()
        pickle.dump(_Payload(marker), buf, protocol=4)
        with zipfile.ZipFile(path, 'w') as zf:
            zf.writestr('archive/data.pkl', buf.getvalue())
            zf.writestr('archive/version', '3\n')
    else:
        raise AssertionError(kind)


KINDS = ['torch_zip', 'torch_legacy', 'pickle_p2', 'pickle_p4', 'zip_data_pkl']


@pytest.fixture(autouse=True)
def _no_trust(monkeypatch):
    monkeypatch.delenv('DINO_MM_TRUST_CHECKPOINTS', raising=False)


def test_payloads_run_when_loaded_unrestricted(tmp_path):
    """Control: each crafted file really runs its payload under an unrestricted load."""
    for kind in KINDS:
        marker = tmp_path / f'{kind}.marker'
        path = str(tmp_path / f'{kind}.pth')
        _write(kind, path, str(marker))
        try:
            torch.load(path, weights_only=False)
        except Exception:  # noqa: BLE001 - the hand-made zip is not a full torch file
            pass
        assert marker.exists(), f'{kind}: the payload did not run unrestricted'


def _tiny_vit():
    from dino_mm.models.backbones import DinoVisionTransformer
    return DinoVisionTransformer('dinov2_vits14', depth=1, embed_dim=32, num_heads=2,
                                 img_size=28)


def _entry_points():
    from mmengine.runner import CheckpointLoader
    from mmengine.runner import load_checkpoint as mm_load_checkpoint

    import dino_mm.hub as hub
    from dino_mm.engine.checkpoint import safe_torch_load
    from dino_mm.models.backbones import DinoVisionTransformer
    from dino_mm.models.backbones.utils import build_backbone_from_file, load_checkpoint_strict
    from dino_mm.models.converters import read_checkpoint
    from dino_mm.models.segmentation.checkpoint import load_state_dict_file

    def init_cfg(path):
        DinoVisionTransformer('dinov2_vits14', depth=1, embed_dim=32, num_heads=2,
                              img_size=28, init_cfg=dict(type='Pretrained',
                                                         checkpoint=path)).init_weights()

    return {
        'safe_torch_load': safe_torch_load,
        'mmengine CheckpointLoader (load_from / resume)':
            lambda p: CheckpointLoader.load_checkpoint(p, map_location='cpu'),
        'mmengine load_checkpoint': lambda p: mm_load_checkpoint(_tiny_vit(), p),
        'hub weights=': lambda p: hub.dinov2_vits14(weights=p, depth=1, embed_dim=32,
                                                     num_heads=2),
        'init_cfg Pretrained': init_cfg,
        'load_checkpoint_strict': lambda p: load_checkpoint_strict(_tiny_vit(), p),
        'build_backbone_from_file': build_backbone_from_file,
        'converters.read_checkpoint': read_checkpoint,
        'segmentation load_state_dict_file': load_state_dict_file,
    }


ENTRY_NAMES = [
    'safe_torch_load', 'mmengine CheckpointLoader (load_from / resume)',
    'mmengine load_checkpoint', 'hub weights=', 'init_cfg Pretrained',
    'load_checkpoint_strict', 'build_backbone_from_file', 'converters.read_checkpoint',
    'segmentation load_state_dict_file'
]


@pytest.mark.parametrize('kind', KINDS)
def test_no_payload_runs_in_process(kind, tmp_path):
    entries = _entry_points()
    assert sorted(entries) == sorted(ENTRY_NAMES)
    for name, load in entries.items():
        marker = tmp_path / f'{name.replace(" ", "_").replace("/", "_")}.marker'
        path = str(tmp_path / f'{kind}.pth')
        _write(kind, path, str(marker))
        with pytest.raises(Exception) as err:  # noqa: PT011 - any refusal, named below
            load(path)
        assert not marker.exists(), f'{kind}: the payload ran through {name}'
        assert osp.basename(path) in str(err.value) or path in str(err.value), (
            f'{kind} via {name}: the error does not name the file: {err.value}')


@pytest.mark.parametrize('tool', ['tools/convert/convert_checkpoint.py',
                                  'tools/convert/pretrain_to_backbone.py'])
def test_no_payload_runs_through_tools(tool, tmp_path):
    marker = tmp_path / 'tool.marker'
    path = str(tmp_path / 'evil.pth')
    _write('torch_zip', path, str(marker))
    proc = subprocess.run([sys.executable, osp.join(ROOT, tool), path,
                           str(tmp_path / 'out.pth')], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300,
                          env={k: v for k, v in os.environ.items()
                               if k != 'DINO_MM_TRUST_CHECKPOINTS'})
    assert proc.returncode != 0
    assert not marker.exists(), f'the payload ran through {tool}'
    assert 'evil.pth' in proc.stderr + proc.stdout
    assert not (tmp_path / 'out.pth').exists()
