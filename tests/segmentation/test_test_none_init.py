"""``tools/test.py CONFIG none`` loads the weights the config names, or refuses.

``Runner.test`` never calls ``init_weights``: before, a segmentation / depth / detection
leaf tested with ``none`` ran a random backbone although its ``init_cfg`` named the
official file, and a missing file went unnoticed.
"""
import pytest
import torch

from dino_mm.models.backbones import vision_transformer
from tests.segmentation.test_end_to_end import (DIM, LINEAR_ADE, _derived_config, _load_tool,
                                                _tiny_options)


def _options(ade_root, tmp_path, init_cfg):
    options = _tiny_options(ade_root, str(tmp_path / 'work'), 1, True, 150)
    options['model.backbone.init_cfg'] = init_cfg
    return options


def test_none_loads_the_init_cfg_backbone_file(ade_root, tmp_path, monkeypatch):
    backbone = vision_transformer.DinoVisionTransformer(
        arch='dinov2_vits14', depth=4, embed_dim=DIM, num_heads=2, img_size=56)
    backbone.init_weights()
    path = tmp_path / 'my_backbone.pth'
    torch.save(backbone.state_dict(), path)
    loaded = []
    real = vision_transformer.load_checkpoint_strict

    def spy(model, ckpt, *args, **kwargs):
        loaded.append(str(ckpt))
        return real(model, ckpt, *args, **kwargs)

    monkeypatch.setattr(vision_transformer, 'load_checkpoint_strict', spy)
    config = _derived_config(tmp_path, LINEAR_ADE, _options(
        ade_root, tmp_path, dict(type='Pretrained', checkpoint=str(path))))
    metrics = _load_tool('test').main([config, 'none', '--work-dir', str(tmp_path / 't')])
    assert loaded == [str(path)]
    assert 0.0 <= metrics['mIoU'] <= 100.0


def test_none_with_a_missing_init_cfg_file_fails_naming_it(ade_root, tmp_path):
    config = _derived_config(tmp_path, LINEAR_ADE, _options(
        ade_root, tmp_path, dict(type='Pretrained', checkpoint=str(tmp_path / 'gone.pth'))))
    with pytest.raises(FileNotFoundError, match='gone.pth'):
        _load_tool('test').main([config, 'none', '--work-dir', str(tmp_path / 't')])


def test_none_without_any_weights_needs_random_init(ade_root, tmp_path, capsys):
    config = _derived_config(tmp_path, LINEAR_ADE, _options(ade_root, tmp_path, None))
    tool = _load_tool('test')
    with pytest.raises(SystemExit) as exc:
        tool.main([config, 'none', '--work-dir', str(tmp_path / 't')])
    assert exc.value.code == 2
    assert '--random-init' in capsys.readouterr().err
    metrics = tool.main([config, 'none', '--random-init', '--work-dir', str(tmp_path / 't2')])
    assert 0.0 <= metrics['mIoU'] <= 100.0


def test_frozen_eval_models_keep_their_backbone_checkpoint_through_init_weights(tmp_path):
    from dino_mm.registry import MODELS
    arch = dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vits14', depth=2,
                embed_dim=32, num_heads=2, img_size=28)
    src = MODELS.build(arch)
    src.init_weights()
    path = tmp_path / 'b.pth'
    torch.save(src.state_dict(), path)
    for cfg in (dict(type='dino_mm.FrozenFeatureModel'),
                dict(type='dino_mm.LinearProbeGrid', n_last_blocks_list=[1], avgpools=[False],
                     learning_rates=[1e-3], num_classes=3)):
        model = MODELS.build(dict(cfg, backbone=arch, backbone_checkpoint=str(path)))
        model.init_weights()  # what the runner does before training
        torch.testing.assert_close(model.backbone.cls_token, src.cls_token, rtol=0, atol=0)
