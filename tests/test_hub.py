"""Hub constructors: every official backbone name, local weights only, torch.hub.load."""
import importlib.util
import os.path as osp

import pytest
import torch

import dino_mm.hub as hub
from dino_mm.hub.backbones import BACKBONE_WEIGHTS
from dino_mm.models.backbones import DINO_VIT_ARCHS

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
BACKBONE_NAMES = [
    'dinov2_vits14', 'dinov2_vitb14', 'dinov2_vitl14', 'dinov2_vitg14', 'dinov2_vits14_reg',
    'dinov2_vitb14_reg', 'dinov2_vitl14_reg', 'dinov2_vitg14_reg', 'dinov3_vits16',
    'dinov3_vits16plus', 'dinov3_vitb16', 'dinov3_vitl16', 'dinov3_vitl16plus',
    'dinov3_vith16plus', 'dinov3_vit7b16'
]
PARAMS_M = {'dinov2_vits14': 22.06, 'dinov2_vitg14_reg': 1136.49, 'dinov3_vit7b16': 6716.04,
            'dinov3_vitl16plus': 403.92}


@pytest.mark.parametrize('name', BACKBONE_NAMES)
def test_every_backbone_constructor_builds_full_size_on_meta(name):
    with torch.device('meta'):
        model = getattr(hub, name)(pretrained=False)
    assert model.arch_settings == DINO_VIT_ARCHS[name]
    if name in PARAMS_M:
        count = sum(p.numel() for p in model.parameters()) / 1e6
        assert abs(count - PARAMS_M[name]) < 0.01, count
    assert not model.training


def test_pretrained_offline_error_names_file(monkeypatch, tmp_path):
    monkeypatch.setenv('DINO_MM_WEIGHTS', str(tmp_path))
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'torchhub'))
    monkeypatch.setenv('HOME', str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        hub.dinov2_vitb14_reg(pretrained=True, depth=1)
    assert 'dinov2_vitb14_reg4_pretrain.pth' in str(err.value)
    assert 'DINO_MM_WEIGHTS' in str(err.value) and 'never downloads' in str(err.value)
    with pytest.raises(FileNotFoundError, match='dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth'):
        hub.dinov3_vitl16(weights='SAT493M', depth=1)
    with pytest.raises(FileNotFoundError, match='neither an existing file'):
        hub.dinov3_vits16(weights=str(tmp_path / 'nope.pth'))


def test_weights_path_and_weights_dir_load_strictly(monkeypatch, tmp_path):
    src = hub.dinov3_vitl16(pretrained=False, depth=1, embed_dim=64, num_heads=1,
                            untie_global_and_local_cls_norm=True)
    file_name = BACKBONE_WEIGHTS['dinov3_vitl16']['SAT493M']
    torch.save(src.state_dict(), tmp_path / file_name)
    monkeypatch.setenv('DINO_MM_WEIGHTS', str(tmp_path))
    # the SAT-493M hash switches on local_cls_norm, as the official hub does
    model = hub.dinov3_vitl16(pretrained=True, weights='SAT493M', depth=1, embed_dim=64,
                              num_heads=1)
    assert model.local_cls_norm is not None
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    by_path = hub.dinov3_vitl16(weights=str(tmp_path / file_name), depth=1, embed_dim=64,
                                num_heads=1)
    assert torch.equal(by_path.cls_token, src.cls_token)
    with pytest.raises(RuntimeError, match='unexpected keys.*\n.*local_cls_norm'):
        hub.dinov3_vits16(weights=str(tmp_path / file_name), depth=1, embed_dim=64,
                          num_heads=1)


def test_torch_hub_load_local():
    model = torch.hub.load(REPO_ROOT, 'dinov2_vitb14', source='local', pretrained=False,
                           depth=1, embed_dim=64, num_heads=2)
    out = model(torch.randn(1, 3, 28, 42))
    assert out.shape == (1, 64)
    spec = importlib.util.spec_from_file_location('hubconf', osp.join(REPO_ROOT, 'hubconf.py'))
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert hubconf.dependencies == ['torch']
    assert all(callable(getattr(hubconf, n)) for n in BACKBONE_NAMES)


def _empty_weights_dirs(monkeypatch, tmp_path):
    monkeypatch.setenv('DINO_MM_WEIGHTS', str(tmp_path / 'weights'))
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'torchhub'))
    monkeypatch.setenv('HOME', str(tmp_path))


def test_pretrained_is_the_default_like_the_official_hub(monkeypatch, tmp_path):
    """``torch.hub.load(repo, 'dinov2_vits14', source='local')`` must not silently return
    random weights: like the official hubconf it loads the official file; offline without
    it, the default warns loudly (naming the file and where to put it) and an explicit
    ``pretrained=True`` fails."""
    _empty_weights_dirs(monkeypatch, tmp_path)
    small = dict(depth=1, embed_dim=64, num_heads=2)
    for call in (lambda **kw: hub.dinov2_vits14(**small, **kw),
                 lambda **kw: torch.hub.load(REPO_ROOT, 'dinov2_vits14', source='local',
                                             **small, **kw)):
        with pytest.raises(FileNotFoundError) as err:
            call(pretrained=True)
        text = str(err.value)
        assert 'dinov2_vits14_pretrain.pth' in text and str(tmp_path / 'weights') in text
        assert 'pretrained' in text or 'weights=' in text
        with pytest.warns(UserWarning) as record:
            model = call()
        text = ' '.join(str(w.message) for w in record)
        assert 'RANDOM weights' in text and 'dinov2_vits14_pretrain.pth' in text, text
        assert str(tmp_path / 'weights') in text
        assert isinstance(model, torch.nn.Module)
    with pytest.raises(FileNotFoundError, match='dinov3_convnext_tiny_pretrain_lvd1689m'):
        hub.dinov3_convnext_tiny(pretrained=True)
    with pytest.warns(UserWarning, match='dinov3_convnext_tiny_pretrain_lvd1689m'):
        hub.dinov3_convnext_tiny(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))

    # With the official file in $DINO_MM_WEIGHTS the default loads it ...
    src = hub.dinov2_vits14(pretrained=False, **small)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    (tmp_path / 'weights').mkdir()
    torch.save(src.state_dict(), tmp_path / 'weights' / 'dinov2_vits14_pretrain.pth')
    loaded = torch.hub.load(REPO_ROOT, 'dinov2_vits14', source='local', **small)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in src.state_dict().items())
    # ... and pretrained=False is the random init.
    fresh = torch.hub.load(REPO_ROOT, 'dinov2_vits14', source='local', pretrained=False,
                           **small)
    assert not torch.equal(fresh.pos_embed, src.pos_embed)


HUB_DIR = osp.join(REPO_ROOT, 'dino_mm', 'hub')
_NO_OWN_LOOKUP = {'environ', 'getenv', 'get_dir', 'expanduser', 'glob', 'iglob', 'listdir',
                  'scandir', 'walk', 'ENV_WEIGHTS_DIR'}


def _hub_sources(with_heads=False):
    import glob
    files = sorted(glob.glob(osp.join(HUB_DIR, '*.py')))
    if with_heads:
        files.append(osp.join(REPO_ROOT, 'dino_mm', 'models', 'heads', 'linear.py'))
    return files


def test_hub_reads_checkpoints_only_through_the_safe_reader():
    """No raw ``torch.load`` in the hub or the linear head: the shared reader
    (``read_checkpoint`` / ``safe_torch_load`` / ``load_checkpoint_strict``) does it."""
    import ast
    offenders = []
    for path in _hub_sources(with_heads=True):
        source = open(path).read()
        if 'torch.load(' in source:
            offenders.append(osp.relpath(path, REPO_ROOT))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr == 'load' and isinstance(node.func.value, ast.Name) and \
                    node.func.value.id in ('torch', 'pickle'):
                offenders.append(f'{osp.relpath(path, REPO_ROOT)}:{node.lineno}')
    assert not offenders, offenders


def test_one_weights_resolver_for_every_hub_module():
    """Only ``hub/utils.py`` knows where weight files live ($DINO_MM_WEIGHTS, ~/.cache,
    torch.hub's dir); every other hub module that loads files goes through it."""
    import ast
    for path in _hub_sources():
        name = osp.basename(path)
        if name == 'utils.py':
            continue
        tree = ast.parse(open(path).read())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                      and isinstance(n.body[0], ast.Expr)
                      and isinstance(n.body[0].value, ast.Constant)}
        docstrings |= {id(c) for n in ast.walk(tree) if isinstance(n, ast.Assign)  # f.__doc__ =
                       and any(isinstance(t, ast.Attribute) and t.attr == '__doc__'
                               for t in n.targets) for c in ast.walk(n.value)}
        found = []
        for node in ast.walk(tree):
            ident = node.attr if isinstance(node, ast.Attribute) else \
                node.id if isinstance(node, ast.Name) else None
            if ident in _NO_OWN_LOOKUP:
                found.append(f'{ident} (line {node.lineno})')
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] + [getattr(node, 'module', None) or '']
                found += [f'import {m} (line {node.lineno})' for m in mods if m == 'glob']
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    id(node) not in docstrings and \
                    ('DINO_MM_WEIGHTS' in node.value or '.cache' in node.value):
                found.append(f'{node.value!r} (line {node.lineno})')
        assert not found, f'dino_mm/hub/{name} searches for weights itself: {found}'
        if name != '__init__.py':
            used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
            assert used & {'resolve_entry_weights', 'resolve_weights'}, name


def test_resolver_urls_and_folders(monkeypatch, tmp_path):
    from dino_mm.hub.utils import resolve_weights
    _empty_weights_dirs(monkeypatch, tmp_path)
    files = {'NYU': 'dinov2_vits14_nyu_dpt_head.pth'}
    (tmp_path / 'weights').mkdir()
    with pytest.raises(ValueError, match='cannot be fetched offline.*weights=<path>'):
        resolve_weights('x', 'https://example.org/other.pth', files, 'NYU')
    # an official URL is looked up by its file name
    torch.save({}, tmp_path / 'weights' / files['NYU'])
    url = 'https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_nyu_dpt_head.pth'
    assert resolve_weights('x', url, files, 'NYU') == str(tmp_path / 'weights' / files['NYU'])
    # a folder holding the official file
    assert resolve_weights('x', str(tmp_path / 'weights'), files, 'NYU') == \
        str(tmp_path / 'weights' / files['NYU'])
    with pytest.raises(FileNotFoundError, match="folder without the official file"):
        resolve_weights('x', str(tmp_path), files, 'NYU', arg='backbone_weights')
