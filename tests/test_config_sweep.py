"""Config sweep: every leaf config under ``configs/`` builds and names official weights.

For **every** leaf (each ``.py`` under ``configs/`` outside ``_base_/`` that is not a
generator script):

(a) ``Config.fromfile`` loads it and its model builds, after one tiny-size override per
    family (ViT depth / width / heads and the head widths that follow from them; every
    other setting is the leaf's own);
(b) every pretrained reference in it -- ``init_cfg`` checkpoints, ``load_from``,
    ``backbone_checkpoint`` / ``weights`` / ``pretrained`` fields, teacher and Gram
    checkpoints, and any other string naming a weight file -- is either an *official*
    file name (the hub's: :data:`dino_mm.hub.backbones.BACKBONE_WEIGHTS`, the ConvNeXt
    names of :mod:`dino_mm.hub.convnext`, the head / detector files named in the other
    ``dino_mm/hub`` modules) of the very backbone the config builds, which the hub's
    resolver (:func:`dino_mm.hub.utils.resolve_weights`) finds in a temporary
    ``$DINO_MM_WEIGHTS``; or the final checkpoint of another stage leaf of the same
    recipe (``work_dirs/<stage leaf>/iter_<its max_iters>.pth``). For a sample per family
    and DINO generation, a file in the official layout (made from the tiny model's own
    random init, then randomised) is loaded through the config's own init path and
    compared tensor by tensor.

(c) For the families whose users' entry point no other test drives on a shipped leaf,
    one inference / training iteration runs in a fresh interpreter that imports only the
    OpenMMLab API (dino_mm comes in through the config's registry scope and the
    start-up hook of the environment): mmdet ``DetInferencer`` for detection, the depth
    estimator's ``test_step`` on a batch of the leaf's own test dataloader for depth, and
    the runner's first training iteration for the ``configs/pretrain`` recipes (DINOv2,
    and the DINOv3 distillation with its teacher loaded from the previous stage).
    Already covered elsewhere, so not repeated here: segmentation through
    ``MMSegInferencer`` / ``inference_model`` (tests/segmentation/test_inferencers.py, a
    DINOv2 and a DINOv3 leaf), the eval models through mmpretrain ``get_model`` +
    ``FeatureExtractor`` (tests/evaluation/test_mmpretrain_inferencers.py, k-NN DINOv3 and
    linear DINOv2), the demo recipes through ``tools/train.py`` (tests/pretrain) and the
    depth leaves' backbone files for all 48 leaves (tests/depth/test_depth_pretrained.py).
"""
import ast
import copy
import functools
import math
import os
import os.path as osp
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope

from dino_mm.hub.backbones import BACKBONE_WEIGHTS
from dino_mm.hub.convnext import CONVNEXT_WEIGHT_HASHES, official_convnext_filename
from dino_mm.hub.utils import ENV_WEIGHTS_DIR, find_weights, resolve_weights
from tests.depth.test_depth_e2e import _write_kitti, _write_nyu
from tests.depth.test_depth_pretrained import _tiny_estimator_cfg
from tests.depth.test_depth_pretrained import no_weights_anywhere  # noqa: F401 (fixture)
from tests.datasets.test_imagenet import _make_extra
from tests.datasets.test_imagenet import imagenet_root  # noqa: F401 (fixture)
from tests.detection.test_detection import _write_tiny_coco

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(ROOT, 'configs')
HUB = osp.join(ROOT, 'dino_mm', 'hub')
DIM = 32  # tiny ViT width (2 heads); the depth tests' tiny backbone has the same
WEIGHT_EXT = ('.pth', '.pt', '.bin', '.safetensors', '.ckpt')
REF_KEYS = ('checkpoint', 'load_from', 'backbone_checkpoint', 'weights', 'pretrained',
            'teacher_ckpt', 'gram_ckpt')
CHAIN = re.compile(r'^work_dirs/(?P<stage>[^/]+)/iter_(?P<iters>\d+)\.pth$')


# ----------------------------------------------------------------------------- leaves
def _is_generator(path: str) -> bool:
    """A script that writes configs, not a config: ``generate_*.py`` or a ``__main__``
    guard (a leaf that merely fails to load is *not* excluded: it fails the sweep)."""
    if osp.basename(path).startswith('generate_'):
        return True
    tree = ast.parse(open(path).read(), filename=path)
    for node in tree.body:
        if isinstance(node, ast.If) and '__main__' in ast.unparse(node.test):
            return True
    return False


def _walk_configs():
    leaves, generators = [], []
    for dirpath, dirnames, filenames in os.walk(CONFIGS):
        dirnames[:] = [d for d in dirnames if d != '_base_']
        for name in filenames:
            if name.endswith('.py'):
                path = osp.join(dirpath, name)
                (generators if _is_generator(path) else leaves).append(path)
    return sorted(leaves), sorted(generators)


LEAVES, GENERATORS = _walk_configs()


def _rel(path: str) -> str:
    return osp.relpath(path, CONFIGS)


def _family(leaf: str) -> str:
    return _rel(leaf).split(os.sep)[0]


# ------------------------------------------------------------------- official file names
def _hub_literal_names():
    """Complete ``*.pth`` file names written as literals in the dino_mm/hub modules."""
    names = set()
    for name in os.listdir(HUB):
        if name.endswith('.py'):
            names.update(re.findall(r"""['"]([A-Za-z0-9_.\-]+\.pth)['"]""",
                                    open(osp.join(HUB, name)).read()))
    return names


BACKBONE_FILES = {f for tags in BACKBONE_WEIGHTS.values() for f in tags.values()}
CONVNEXT_FILES = {official_convnext_filename(s): s for s in CONVNEXT_WEIGHT_HASHES}
OFFICIAL = BACKBONE_FILES | set(CONVNEXT_FILES) | _hub_literal_names()


def _default_tag(arch: str) -> str:
    return 'LVD142M' if arch.startswith('dinov2') else 'LVD1689M'


# ----------------------------------------------------------------------- references
def _refs(node, path='', owner=None, out=None):
    """``(where, value, owner)`` for every string naming a weight file in a config.

    ``owner`` is the nearest enclosing dict with an ``arch`` (the backbone the file is
    for, e.g. the one whose ``init_cfg`` names it), else None."""
    out = [] if out is None else out
    if isinstance(node, dict):
        owner = node if 'arch' in node else owner
        for k, v in node.items():
            where = f'{path}.{k}' if path else str(k)
            if isinstance(v, str) and (k in REF_KEYS or v.endswith(WEIGHT_EXT)):
                out.append((where, v, owner))
            else:
                _refs(v, where, owner, out)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _refs(v, f'{path}[{i}]', owner, out)
    return out


def _pure(cfg):
    return cfg.to_dict() if isinstance(cfg, Config) else cfg


@functools.lru_cache(maxsize=None)
def _max_iters(path: str) -> int:
    return int(Config.fromfile(path).train_cfg.max_iters)


def _check_reference(leaf, where, value, owner, weights_dir):
    """One reference: an official file of its backbone that the hub resolves, or the
    last checkpoint of a sibling stage leaf. Returns the resolved path (or None)."""
    chain = CHAIN.match(value)
    if chain:
        stage = osp.join(osp.dirname(leaf), chain['stage'] + '.py')
        assert osp.isfile(stage) and stage in LEAVES, (
            f'{_rel(leaf)}: {where}={value!r} names no stage config of this recipe '
            f'({_rel(stage)} is not a leaf)')
        assert int(chain['iters']) == _max_iters(stage), (
            f'{_rel(leaf)}: {where}={value!r} is not the final checkpoint of '
            f'{_rel(stage)} (max_iters={_max_iters(stage)})')
        return None
    name = osp.basename(value)
    assert name in OFFICIAL, (
        f'{_rel(leaf)}: {where}={value!r} is not an official weight file name (the hub '
        f'knows e.g. {sorted(BACKBONE_FILES)[:3]}...); official files are found by name '
        f'in ${ENV_WEIGHTS_DIR}, so a renamed file silently fails to resolve')
    open(osp.join(weights_dir, name), 'wb').close()  # the file a user downloaded
    arch = owner.get('arch') if owner else None
    if owner is not None and str(owner.get('type', '')).endswith('DinoVisionTransformer'):
        assert name in BACKBONE_WEIGHTS[arch].values(), (
            f'{_rel(leaf)}: {where}={value!r} is not a file of the {arch} backbone it '
            f'initialises (official: {sorted(BACKBONE_WEIGHTS[arch].values())})')
        resolved = resolve_weights(arch, value, BACKBONE_WEIGHTS[arch], _default_tag(arch))
    elif owner is not None and str(owner.get('type', '')).endswith('DinoConvNeXt'):
        assert CONVNEXT_FILES.get(name) == arch, (
            f'{_rel(leaf)}: {where}={value!r} is not the ConvNeXt-{arch} file')
        resolved = find_weights(name)
    else:
        resolved = find_weights(name)
    assert resolved == osp.join(weights_dir, name), (
        f'{_rel(leaf)}: {where}={value!r} resolved to {resolved!r}, not to the file in '
        f'${ENV_WEIGHTS_DIR}')
    return resolved


# -------------------------------------------------------------------- tiny overrides
def _tiny_indices(n: int, depth: int):
    """``n`` block indices of a ``depth``-block ViT, the last ones (repeats allowed)."""
    return [max(0, depth - n + i) for i in range(n)]


def _tiny_vit(bb: dict, depth: int = 2) -> dict:
    bb.update(depth=depth, embed_dim=DIM, num_heads=2)
    if bb.get('out_indices') is not None:
        bb['out_indices'] = _tiny_indices(len(bb['out_indices']), depth)
    if bb.get('frozen_stages', -1) > 0:
        bb['frozen_stages'] = depth  # every frozen config freezes the whole ViT
    return bb


def _tiny_ssl_heads(model: dict) -> None:
    for key in ('dino_head', 'ibot_head'):
        if model.get(key) is not None:
            model[key].update(out_dim=64, hidden_dim=32, bottleneck_dim=16)


def tiny_pretrain(cfg: Config) -> Config:
    """dino_mm.DINOv2 / DINOv3 / DINOv3Distillation / MultiDistillation."""
    model = cfg.model
    assert model.type in ('dino_mm.DINOv2', 'dino_mm.DINOv3', 'dino_mm.DINOv3Distillation',
                          'dino_mm.MultiDistillation'), model.type
    parts = [model] + ([model.teacher] if model.get('teacher') else []) + \
        list(model.get('students', {}).values())
    for part in parts:
        backbone = part.get('backbone')
        if backbone is not None and backbone.get('type') == 'dino_mm.DinoConvNeXt':
            backbone.update(depths=[1, 1, 1, 1], dims=[8, 16, 24, DIM])  # ConvNeXt students
        elif backbone is not None:
            _tiny_vit(backbone, depth=4)  # block_chunks=4 -> one block per chunk
        _tiny_ssl_heads(part)
    return cfg


def tiny_eval(cfg: Config) -> Config:
    """FrozenFeatureModel (k-NN, logistic regression) and LinearProbeGrid."""
    assert cfg.model.type in ('dino_mm.FrozenFeatureModel', 'dino_mm.LinearProbeGrid')
    _tiny_vit(cfg.model.backbone, depth=4)  # the grid probes the last 4 blocks
    return cfg


def tiny_segmentation(cfg: Config) -> Config:
    model = cfg.model
    head = model.decode_head
    if model.backbone.type in ('dino_mm.DinoViTAdapter', 'dino_mm.ViTAdapter'):  # + M2F
        _tiny_vit(model.backbone.backbone)
        n = len(model.backbone.interaction_indexes)
        indices = _tiny_indices(n, 2)
        if model.backbone.type == 'dino_mm.ViTAdapter':  # contiguous block ranges
            indices = [[0, 0], [1, 1]]
        model.backbone.update(interaction_indexes=indices, deform_num_heads=2,
                              conv_inplane=8)
        attn = dict(embed_dims=DIM, num_heads=2)
        ffn = dict(embed_dims=DIM, feedforward_channels=2 * DIM)
        head.update(in_channels=[DIM] * len(head.in_channels), feat_channels=DIM,
                    out_channels=DIM, num_queries=8)
        head.pixel_decoder.encoder.update(num_layers=1)
        head.pixel_decoder.encoder.layer_cfg.self_attn_cfg.update(attn)
        head.pixel_decoder.encoder.layer_cfg.ffn_cfg.update(ffn)
        head.pixel_decoder.norm_cfg.update(num_groups=8)
        head.pixel_decoder.positional_encoding.num_feats = DIM // 2
        head.positional_encoding.num_feats = DIM // 2
        dec = head.transformer_decoder
        dec.update(num_layers=1)
        dec.layer_cfg.self_attn_cfg.update(attn)
        dec.layer_cfg.cross_attn_cfg.update(attn)
        dec.layer_cfg.ffn_cfg.update(ffn)
    else:  # BN + 1x1 conv on 1 or 4 layers
        _tiny_vit(model.backbone)
        n = len(head.in_channels)
        head.update(in_channels=[DIM] * n, channels=DIM * n)
    return cfg


def tiny_depth(cfg: Config, leaf: str) -> Config:
    cfg.model = _tiny_estimator_cfg(leaf)  # tests/depth's tiny estimator of the leaf
    return cfg


def tiny_detection(cfg: Config) -> Config:
    """As tests/data/configs/det_dino_tiny.py: mmdet's DINO keeps its 256-d transformer
    (128 sine features per coordinate are hard-coded), with one layer and few queries."""
    model = cfg.model
    _tiny_vit(model.backbone)
    if model.type == 'dino_mm.PlainDETR':  # the official DINOv3 detector
        _tiny_vit(model.backbone, depth=4)
        model.update(hidden_dim=64, dim_feedforward=64, num_encoder_layers=1,
                     num_decoder_layers=1, num_queries_one2one=10, num_queries_one2many=10,
                     rpe_hidden_dim=16, topk=20)
        return cfg
    model.neck.in_channels = DIM
    model.num_queries = 20
    model.encoder.num_layers = 1
    model.encoder.layer_cfg.ffn_cfg.feedforward_channels = 64
    model.decoder.num_layers = 1
    model.decoder.layer_cfg.ffn_cfg.feedforward_channels = 64
    model.dn_cfg.group_cfg.num_dn_queries = 10
    model.test_cfg.max_per_img = 20
    return cfg


def tiny_demo(cfg: Config) -> Config:
    """The demo recipes are already tiny (digits); they build as shipped."""
    assert cfg.model.type in ('dino_mm.DINOv2', 'dino_mm.DINOv3', 'dino_mm.DINOv3Distillation',
                              'dino_mm.DINOTxt', 'mmpretrain.ImageClassifier'), cfg.model.type
    return cfg


def tiny_dinotxt(cfg: Config) -> Config:
    """dino.txt training / zero-shot leaves (a DINOTxt, or one inside the zero-shot
    segmentor): tiny ViT and text tower; the backbone file is checked by (b), not loaded."""
    model = cfg.model.dinotxt if cfg.model.type == 'dino_mm.DINOTxtZeroShotSegmentor' else cfg.model
    assert model.type == 'dino_mm.DINOTxt', model.type
    _tiny_vit(model.vision_backbone)
    model.text_backbone.update(dim=DIM, num_heads=2, num_layers=1)
    model.embed_dim = 2 * DIM
    model.backbone_checkpoint = None
    return cfg


TINY = {'pretrain': tiny_pretrain, 'eval': tiny_eval, 'segmentation': tiny_segmentation,
        'depth': tiny_depth, 'detection': tiny_detection, 'demo': tiny_demo,
        'dinotxt': tiny_dinotxt}


def tiny_cfg(leaf: str, cfg: Config = None) -> Config:
    cfg = Config.fromfile(leaf) if cfg is None else cfg
    family = _family(leaf)
    assert family in TINY, f'{_rel(leaf)}: no tiny override for the {family!r} family'
    return TINY[family](cfg, leaf) if family == 'depth' else TINY[family](cfg)


def _build(cfg: Config):
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'dino_mm')):
        return MODELS.build(copy.deepcopy(cfg.model))


# ------------------------------------------------------------- official-layout weights
def _vits_with_pretrained(model):
    from dino_mm.models.backbones import DinoVisionTransformer
    return [m for m in model.modules() if isinstance(m, DinoVisionTransformer)
            and isinstance(m.init_cfg, dict) and m.init_cfg.get('type') == 'Pretrained']


def _official_file(backbone, path, seed=0):
    """The tiny backbone's own state dict (official layout), parameters randomised so
    that a load cannot be mistaken for the random init."""
    gen = torch.Generator().manual_seed(seed)
    params = {k for k, _ in backbone.named_parameters()}
    sd = {k: (torch.randn(v.shape, generator=gen, dtype=v.dtype) if k in params else v)
          for k, v in backbone.state_dict().items()}
    torch.save(sd, path)
    return sd


def _assert_loaded(module, sd, what):
    got = module.state_dict()
    assert sorted(got) == sorted(sd), what
    for k, v in sd.items():
        assert torch.equal(got[k], v), f'{what}: {k} was not loaded'


# Leaves whose generated official file is loaded through the config's own init path
# (one per family and generation with backbone files; depth: all 48 in tests/depth).
LOAD_SAMPLES = {
    'segmentation/dinov2/dinov2-vitg14_vit-adapter-m2f_8xb2-80k_ade20k-512x512.py',
    'segmentation/dinov3/dinov3-vits16plus_ms_8xb2-40k_voc12-640x640.py',
    'detection/dino-4scale_dinov2-vitb14-frozen_sfp_8xb2-12e_coco.py',
    'detection/dino-4scale_dinov3-vitl16plus-ft_sfp_8xb2-12e_coco.py',
    'eval/knn/dinov2-vits14-reg_knn_8xb256_in1k.py',
    'eval/linear/dinov3-vith16plus_linear-grid_8xb128-12.5k_in1k.py',
}


def _load_sample(leaf, cfg, model, weights_dir):
    if _family(leaf) == 'eval':
        # The eval leaves leave model.backbone_checkpoint to the user (their README:
        # "set model.backbone_checkpoint=<official backbone file>"): the hub finds it.
        arch = cfg.model.backbone.arch
        name = BACKBONE_WEIGHTS[arch][_default_tag(arch)]
        sd = _official_file(model.backbone, osp.join(weights_dir, name))
        path = resolve_weights(arch, None, BACKBONE_WEIGHTS[arch], _default_tag(arch))
        assert path == osp.join(weights_dir, name)
        cfg.model.backbone_checkpoint = path
        _assert_loaded(_build(cfg).backbone, sd, _rel(leaf))
        return
    vits = _vits_with_pretrained(model)
    assert vits, f'{_rel(leaf)}: no backbone loads pretrained weights'
    files = {}
    for i, vit in enumerate(vits):
        path = osp.join(weights_dir, osp.basename(vit.init_cfg['checkpoint']))
        files[id(vit)] = _official_file(vit, path, seed=i + 1)
    model.init_weights()  # what the runner calls before training
    for vit in vits:
        _assert_loaded(vit, files[id(vit)], _rel(leaf))


# ------------------------------------------------------------------------ (a) + (b)
def test_sweep_covers_every_leaf(capsys):
    """The parametrisation below is every leaf; each has a family override."""
    found = sorted(osp.join(d, f) for d, dirs, fs in os.walk(CONFIGS) if '_base_' not in d
                   for f in fs if f.endswith('.py'))
    assert sorted(LEAVES + GENERATORS) == found
    assert all(osp.basename(g).startswith('generate_') for g in GENERATORS), GENERATORS
    assert {_family(leaf) for leaf in LEAVES} <= set(TINY)
    assert LOAD_SAMPLES <= {_rel(leaf) for leaf in LEAVES}
    line = (f'config sweep: {len(LEAVES)} of {len(LEAVES)} leaf configs covered by build + '
            f'weight resolution ({len(GENERATORS)} generator scripts excluded: '
            f'{", ".join(_rel(g) for g in GENERATORS)})')
    print(line)  # in the captured output (-rA) ...
    with capsys.disabled():
        os.write(2, f'\n{line}\n'.encode())  # ... and on the terminal, also under xdist
    assert len(set(LEAVES)) == len(LEAVES) == len(found) - len(GENERATORS)


@pytest.mark.parametrize('leaf', LEAVES, ids=_rel)
def test_leaf_builds_and_names_official_weights(leaf, no_weights_anywhere):  # noqa: F811
    weights_dir = os.environ[ENV_WEIGHTS_DIR]
    cfg = Config.fromfile(leaf)
    # (b) every weight file it names
    refs = _refs(_pure(cfg))
    for where, value, owner in refs:
        if value is not None:
            _check_reference(leaf, where, value, owner, weights_dir)
    # a stage continues a sibling stage leaf, found by its work-dir name
    for hook in cfg.get('custom_hooks', None) or []:
        previous = hook.get('previous_stage') if isinstance(hook, dict) else None
        if previous:
            stage = osp.join(osp.dirname(leaf), previous + '.py')
            assert stage in LEAVES, (f'{_rel(leaf)}: previous_stage={previous!r} names no '
                                     f'stage config beside it ({_rel(stage)})')
    if _family(leaf) in ('segmentation', 'depth', 'detection'):
        assert any(w.endswith('init_cfg.checkpoint') for w, _, _ in refs), (
            f'{_rel(leaf)} trains its head on a randomly initialised backbone')
    if _family(leaf) == 'eval':  # the backbone file the user passes is an official one
        arch = cfg.model.backbone.arch
        open(osp.join(weights_dir, BACKBONE_WEIGHTS[arch][_default_tag(arch)]), 'wb').close()
        assert osp.dirname(resolve_weights(arch, None, BACKBONE_WEIGHTS[arch],
                                           _default_tag(arch))) == weights_dir
    # (a) the model builds (tiny)
    cfg = tiny_cfg(leaf, cfg)
    model = _build(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0
    if _rel(leaf) in LOAD_SAMPLES:
        for name in os.listdir(weights_dir):
            os.remove(osp.join(weights_dir, name))  # placeholders of (b)
        _load_sample(leaf, cfg, model, weights_dir)


# ------------------------------------------------------------------------------- (c)
def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS='1', **extra)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH')) if p)
    return env


def _run(script, args, cwd, env):
    """A user's script in a fresh interpreter; it must not import dino_mm itself."""
    assert 'dino_mm' not in script
    proc = subprocess.run([sys.executable, '-c', script, *map(str, args)], cwd=str(cwd),
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout


def _dump(cfg: Config, path) -> str:
    cfg.dump(str(path))
    return str(path)


DET_SCRIPT = textwrap.dedent('''
    from mmdet.apis import DetInferencer, init_detector
    import sys
    import numpy as np
    import torch
    from PIL import Image

    image, work, configs = sys.argv[1], sys.argv[2], sys.argv[3:]
    w, h = Image.open(image).size
    for i, config in enumerate(configs):
        torch.manual_seed(i)
        model = init_detector(config, device='cpu')
        # As the Runner does before training: mmdet's DINO allocates some parameters
        # uninitialised (level_embed is torch.Tensor(n, d)) and fills them in init_weights;
        # the backbone reads its official file from $DINO_MM_WEIGHTS.
        model.init_weights()
        bad = [k for k, v in model.state_dict().items()
               if v.is_floating_point() and not torch.isfinite(v).all()]
        assert not bad, bad
        classes = model.dataset_meta['classes']
        ckpt = f'{work}/det_{i}.pth'  # a trained checkpoint, as tools/train.py writes it
        torch.save({'state_dict': model.state_dict(),
                    'meta': {'dataset_meta': {'classes': list(classes)}}}, ckpt)
        inferencer = DetInferencer(model=config, weights=ckpt, device='cpu')
        out = inferencer(image, no_save_vis=True, no_save_pred=True)
        pred = out['predictions'][0]
        boxes = np.asarray(pred['bboxes'])
        assert boxes.shape == (20, 4), boxes.shape  # test_cfg.max_per_img
        assert len(pred['scores']) == 20 and max(pred['labels']) < len(classes)
        assert (boxes >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all(), (
            boxes.max(0), w, h)
        print('OK', config, len(classes))
''')


def test_detection_det_inferencer_in_a_fresh_process(tmp_path, real_images):
    root = tmp_path / 'coco'
    _write_tiny_coco(str(root), real_images)
    image = root / 'val2017' / '000000000000.jpg'
    weights = tmp_path / 'weights'
    weights.mkdir()
    configs = []
    for rel in ('detection/dino-4scale_dinov2-vits14-frozen_sfp_8xb2-12e_coco.py',
                'detection/dino-4scale_dinov3-vits16-ft_sfp_8xb2-12e_coco.py'):
        cfg = tiny_cfg(osp.join(CONFIGS, rel))
        for t in cfg.test_dataloader.dataset.pipeline:  # the leaf's pipeline, tiny images
            if t['type'] == 'Resize':
                t['scale'] = (160, 120)
        for vit in _vits_with_pretrained(_build(cfg)):
            _official_file(vit, weights / osp.basename(vit.init_cfg['checkpoint']))
        configs.append(_dump(cfg, tmp_path / osp.basename(rel)))
    out = _run(DET_SCRIPT, [image, tmp_path, *configs], tmp_path,
               _env(DINO_MM_WEIGHTS=str(weights)))
    assert out.count('OK') == 2 and ' 80' in out, out  # the leaves' COCO classes


DEPTH_SCRIPT = textwrap.dedent('''
    from mmseg.apis import init_model
    import sys
    import torch
    from mmengine.runner import Runner

    for config in sys.argv[1:]:
        model = init_model(config, device='cpu')
        model.init_weights()  # the official backbone file, from $DINO_MM_WEIGHTS
        loader = Runner.build_dataloader(model.cfg.test_dataloader)
        batch = next(iter(loader))
        with torch.no_grad():
            sample = model.test_step(batch)[0]
        pred = sample.pred_depth_map.data
        h, w = sample.ori_shape
        max_depth = model.cfg.model.decode_head.max_depth
        assert tuple(pred.shape) == (1, h, w), (pred.shape, sample.ori_shape)
        assert torch.isfinite(pred).all() and 0 < pred.min() and pred.max() <= max_depth
        assert sample.gt_depth_map.data.shape == pred.shape
        print('OK', config, tuple(pred.shape))
''')


def test_depth_predict_in_a_fresh_process(tmp_path, real_images):
    images = [real_images[k] for k in ('astronaut', 'chelsea')]
    nyu, kitti, weights = tmp_path / 'nyu', tmp_path / 'kitti', tmp_path / 'weights'
    _write_nyu(nyu, images)
    _write_kitti(kitti, images)
    weights.mkdir()
    configs = []
    for rel, root in (('depth/dinov2-vits14_linear4_8xb2-38k_nyu.py', nyu),
                      ('depth/dinov3-vitb16_dpt_8xb2-38k_kitti.py', kitti)):
        leaf = osp.join(CONFIGS, rel)
        cfg = tiny_cfg(leaf)
        for key in ('val_dataloader', 'test_dataloader'):
            cfg[key].update(num_workers=0, persistent_workers=False)
            cfg[key].dataset.data_root = str(root)
        model = _build(cfg)
        for vit in _vits_with_pretrained(model):
            _official_file(vit, weights / osp.basename(vit.init_cfg['checkpoint']))
        configs.append(_dump(cfg, tmp_path / osp.basename(rel)))
    out = _run(DEPTH_SCRIPT, configs, tmp_path, _env(DINO_MM_WEIGHTS=str(weights)))
    assert out.count('OK') == 2, out


PRETRAIN_SCRIPT = textwrap.dedent('''
    import math
    import sys
    import torch
    from mmengine.config import Config
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    for config in sys.argv[1:]:
        cfg = Config.fromfile(config)
        runner = RUNNERS.build(cfg) if cfg.get('runner_type') else Runner.from_cfg(cfg)
        runner.train()
        loss = runner.message_hub.get_scalar('train/loss').current()
        assert runner.iter == 1 and math.isfinite(loss), (runner.iter, loss)
        # The previous stage's teacher (found by StageCheckpointHook), loaded strictly.
        teacher_ckpt = getattr(runner.model, 'teacher_ckpt', None)
        if cfg.model.type.endswith('Distillation'):
            assert teacher_ckpt, 'the distillation ran without its teacher'
        if teacher_ckpt:
            sd = torch.load(teacher_ckpt, map_location='cpu')['state_dict']
            got = runner.model.teacher.state_dict()
            for k, v in got.items():
                assert torch.equal(v, sd['teacher.' + k]), k
        print('OK', config, runner.iter, loss)
''')


def _tiny_run(cfg: Config, data_root, work_dir) -> Config:
    """One iteration at batch 2 on tiny crops of the photographs in ``data_root``."""
    patch = cfg.model.backbone.get('patch_size', 16)
    cfg.work_dir = str(work_dir)
    loader = cfg.train_dataloader
    loader.update(batch_size=2, num_workers=0, persistent_workers=False, pin_memory=False)
    loader.dataset.data_root = str(data_root)
    loader.collate_fn.patch_size = patch
    for t in loader.dataset.pipeline:
        if t['type'] == 'dino_mm.DINOMultiCrop':
            t.update(global_crops_size=2 * patch, local_crops_size=patch,
                     local_crops_number=2)
    cfg.train_cfg.max_iters = 1
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.update(interval=1, save_last=False)
    return cfg


def test_pretrain_first_iteration_in_a_fresh_process(tmp_path, imagenet_root):  # noqa: F811
    _make_extra(imagenet_root)
    configs = []
    v2 = _tiny_run(tiny_cfg(osp.join(CONFIGS, 'pretrain/dinov2_vitl16-short_32xb64-100e_in1k.py')),
                   imagenet_root, tmp_path / 'wd_v2')
    configs.append(_dump(v2, tmp_path / 'dinov2_short.py'))
    # DINOv3 distillation: the teacher is the last checkpoint of the ViT-L stage leaf's run
    # (its work dir beside the distillation's, as tools/train.py lays them out), made here
    # by that leaf's own (tiny) model as the runner saves it.
    leaf = osp.join(CONFIGS, 'pretrain/dinov3_vits16_distill-vitl16_im1k.py')
    distill = tiny_cfg(leaf)
    stage = tiny_cfg(osp.join(CONFIGS, 'pretrain/dinov3_vitl16_im1k_lin834.py'))
    stage_model = _build(stage)
    with torch.no_grad():  # a trained teacher: not the init the distillation model makes
        for p in stage_model.teacher.parameters():
            p.mul_(1 + 0.1 * torch.randn_like(p))
    stage_dir = tmp_path / 'work_dirs' / 'dinov3_vitl16_im1k_lin834'
    stage_dir.mkdir(parents=True)
    ckpt = stage_dir / 'iter_125000.pth'
    torch.save({'state_dict': stage_model.state_dict(), 'meta': {'iter': 125000}}, ckpt)
    (stage_dir / 'last_checkpoint').write_text(str(ckpt))
    distill = _tiny_run(distill, imagenet_root,
                        tmp_path / 'work_dirs' / 'dinov3_vits16_distill-vitl16_im1k')
    configs.append(_dump(distill, tmp_path / 'dinov3_distill.py'))
    out = _run(PRETRAIN_SCRIPT, configs, tmp_path, _env())
    assert out.count('OK') == 2, out
    losses = [float(line.split()[-1]) for line in out.splitlines() if line.startswith('OK')]
    assert all(math.isfinite(x) and x > 0 for x in losses), losses
