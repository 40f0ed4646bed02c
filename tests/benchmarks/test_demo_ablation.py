"""The CPU-side parts of the demo ablation and its lightly peer (no training here).

* every ablation row is a valid ``--cfg-options`` set for the shipped demo config (the
  checks tools/demo.py applies), and the ``official`` row restores the official recipe;
* the peer reads the demo's recipe (sizes, schedules, augmentation) from the config.
"""
import math
import os.path as osp
import sys

from mmengine.config import Config, DictAction

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))
DEMO = osp.join(ROOT, 'configs', 'demo', 'dinov2_vit-tiny_digits.py')


def _apply(options):
    import argparse

    from dino_mm.engine.config_checks import validate_cfg_options
    cfg = Config.fromfile(DEMO)
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    parsed = parser.parse_args(['--cfg-options'] + list(options)).cfg_options if options \
        else None
    if parsed:
        cfg.merge_from_dict(validate_cfg_options(cfg, parsed))
    return cfg


def test_every_row_applies_to_the_demo_config():
    from demo_ablation import ROWS
    assert 'official (400 it)' in ROWS and len(ROWS) > 10
    for name, options in ROWS.items():
        _apply(options)  # raises ConfigError naming the key when a row goes stale


def test_official_row_restores_the_official_recipe():
    from demo_ablation import OFFICIAL
    cfg = _apply(OFFICIAL)
    crop = cfg.train_dataloader.dataset.pipeline[1]
    assert cfg.model.backbone.layerscale_init == 1e-5
    assert cfg.model.dino_head.out_dim == 1024
    assert tuple(crop.global_crops_scale) == (0.32, 1.0)
    assert tuple(crop.local_crops_scale) == (0.05, 0.32)
    assert crop.official_blur_quirk is True
    assert tuple(crop.blur_probabilities) == (1.0, 0.1, 0.5)
    assert crop.solarize_probability == 0.2
    assert cfg.train_cfg.max_iters == 400


def test_peer_reads_the_recipe_from_the_config():
    from lightly_peer import recipe
    cfg = Config.fromfile(DEMO)
    r = recipe(cfg)
    assert (r['embed_dim'], r['depth'], r['num_heads'], r['patch_size']) == (96, 4, 4, 8)
    assert (r['global_size'], r['local_size'], r['n_local']) == (32, 16, 2)
    assert r['out_dim'] == cfg.model.dino_head.out_dim == 64
    assert r['blur'] == (0.0, 0.0, 0.0) and r['solarize'] == 0.0
    assert r['iters'] == cfg.train_cfg.max_iters
    assert r['lr_peak'] == 0.004 * math.sqrt(32 / 1024)
    assert r['warmup'] == cfg.train_cfg.max_iters // 10
    official = recipe(_apply(__import__('demo_ablation').OFFICIAL))
    # the official blur quirk inverts the written probabilities: effective 0.0 / 0.9 / 0.5
    assert official['blur'] == (0.0, 0.9, 0.5)
    # a shorter run keeps the warm-up's share
    assert recipe(cfg, max_iters=100)['warmup'] == cfg.param_scheduler[0].warmup_iters // 10
