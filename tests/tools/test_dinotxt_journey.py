"""dino.txt through the user's doors: tools/train.py on a COCO-Captions-layout dataset
(trains, checkpoints, resumes exactly), tools/test.py zero-shot classification on an
ImageNet-layout split, and bad input refused by the tools with the file named."""
import json
import os.path as osp
import shutil
import subprocess
import sys

import pytest
import torch

from dino_mm.engine.checkpoint import safe_torch_load

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT, 'configs', 'demo', 'dinotxt_vit-tiny_digits.py')
PY = sys.executable


def _opts(captions_root, digits_root, max_iters, extra=()):
    return ['--cfg-options', f'train_dataloader.dataset.data_root={captions_root}',
            f'test_dataloader.dataset.data_root={digits_root}',
            'model.vision_backbone.img_size=16', 'train_dataloader.batch_size=16',
            # deterministic inputs: an uninterrupted and a resumed run must match exactly
            'train_dataloader.dataset.caption_sampling=first',
            'train_dataloader.dataset.pipeline.1.crop_ratio_range=[1.0,1.0]',
            'train_dataloader.dataset.pipeline.1.aspect_ratio_range=[1.0,1.0]',
            f'train_cfg.max_iters={max_iters}',
            # explicit schedule length (kept by tools/train.py): both runs share it
            'param_scheduler.0.total_iters=12', 'param_scheduler.0.warmup_iters=2',
            'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1',
            'randomness.deterministic=True', *extra]


def _run(cmd, env, timeout=600):
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_train_resume_and_zero_shot_test(tmp_path, captions_root, digits_root, tool_env):
    full, part = str(tmp_path / 'full'), str(tmp_path / 'part')
    p = _run([PY, 'tools/train.py', CONFIG, '--work-dir', full,
              *_opts(captions_root, digits_root, 6)], tool_env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'loss_clip' in p.stdout + p.stderr
    p = _run([PY, 'tools/train.py', CONFIG, '--work-dir', part,
              *_opts(captions_root, digits_root, 4)], tool_env)
    assert p.returncode == 0, p.stderr[-3000:]
    p = _run([PY, 'tools/train.py', CONFIG, '--work-dir', part, '--resume',
              *_opts(captions_root, digits_root, 6)], tool_env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'resumed epoch: 0, iter: 4' in p.stdout + p.stderr
    a = safe_torch_load(osp.join(full, 'iter_6.pth'))
    b = safe_torch_load(osp.join(part, 'iter_6.pth'))
    assert any(k.startswith('text_model.') for k in a['state_dict'])
    for k, v in a['state_dict'].items():
        torch.testing.assert_close(b['state_dict'][k], v, rtol=0, atol=1e-6, msg=k)
    assert {int(s['step']) for s in b['optimizer']['state'].values()} == {6}
    # zero-shot classification of the held-out split through tools/test.py
    out = str(tmp_path / 'metrics.json')
    p = _run([PY, 'tools/test.py', CONFIG, osp.join(full, 'iter_6.pth'), '--work-dir',
              str(tmp_path / 'test'), '--out', out,
              '--cfg-options', f'test_dataloader.dataset.data_root={digits_root}',
              'model.vision_backbone.img_size=16'], tool_env)
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = json.load(open(out))
    assert 0.0 <= metrics['accuracy/top1'] <= 100.0


def test_heads_only_checkpoint_without_backbone_is_refused(tmp_path, captions_root,
                                                          digits_root, tool_env):
    """A released-style file (heads only) with a config whose backbone is random: refused."""
    from dino_mm.models.text import DINOTxt
    from mmengine.config import Config
    cfg = Config.fromfile(CONFIG)
    cfg.model.pop('type')
    cfg.model.save_frozen_backbone = False
    cfg.model.vision_backbone.img_size = 16
    model = DINOTxt(**cfg.model)
    ckpt = str(tmp_path / 'heads.pth')
    torch.save(model.state_dict(), ckpt)
    p = _run([PY, 'tools/test.py', CONFIG, ckpt, '--work-dir', str(tmp_path / 'w'),
              '--cfg-options', f'test_dataloader.dataset.data_root={digits_root}',
              'model.vision_backbone.img_size=16', 'model.save_frozen_backbone=False'],
             tool_env)
    assert p.returncode != 0
    assert 'backbone_checkpoint' in p.stdout + p.stderr


def test_missing_images_are_named_by_tools_train(tmp_path, captions_root, digits_root,
                                                 tool_env):
    broken = str(tmp_path / 'captions')
    shutil.copytree(captions_root, broken)
    ann = json.load(open(osp.join(broken, 'annotations', 'captions_train2017.json')))
    victim = ann['images'][0]['file_name']
    import os
    os.remove(osp.join(broken, 'train2017', victim))
    p = _run([PY, 'tools/train.py', CONFIG, '--work-dir', str(tmp_path / 'w'),
              *_opts(broken, digits_root, 2)], tool_env)
    assert p.returncode != 0
    assert victim in p.stdout + p.stderr


@pytest.mark.dist
def test_two_ddp_ranks_equal_one_process_with_the_global_batch(tmp_path, captions_root,
                                                              digits_root, tool_env, free_port):
    """tools/dist_train.sh, 2 gloo ranks x 8 pairs == 1 process x 16 pairs: InfiniteSampler
    gives rank r the samples r, r+2, ... of the same shuffled order, and the gathered CLIP
    loss is the loss of the global batch, so DDP's averaged gradients are the same."""
    one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
    p = _run([PY, 'tools/train.py', CONFIG, '--work-dir', one,
              *_opts(captions_root, digits_root, 2)], tool_env)
    assert p.returncode == 0, p.stderr[-3000:]
    env = dict(tool_env, PORT=free_port, PYTHON=PY)
    p = _run(['bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir', two,
              *_opts(captions_root, digits_root, 2, ['train_dataloader.batch_size=8'])], env)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
    a = safe_torch_load(osp.join(one, 'iter_2.pth'))['state_dict']
    b = safe_torch_load(osp.join(two, 'iter_2.pth'))['state_dict']
    assert a.keys() == b.keys()
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=1e-4, atol=1e-5, msg=k)
    # and the runs trained: the weights moved away from the shared initialisation
    p = _run([PY, 'tools/train.py', CONFIG, '--work-dir', str(tmp_path / 'zero'),
              *_opts(captions_root, digits_root, 2, ['optim_wrapper.optimizer.lr=0.0',
                                                    'param_scheduler.0.base_value=0.0'])],
             tool_env)
    assert p.returncode == 0, p.stderr[-3000:]
    c = safe_torch_load(osp.join(tmp_path / 'zero', 'iter_2.pth'))['state_dict']
    key = 'text_model.head.linear_projection.weight'
    assert not torch.allclose(a[key], c[key], atol=1e-6)


def test_released_style_heads_file_with_the_in1k_zero_shot_config(tmp_path, digits_root,
                                                                   tool_env):
    """The release path: the ImageNet zero-shot config, a heads-only file as CHECKPOINT (as
    Meta ships it) and the backbone file in model.backbone_checkpoint, on data in the
    official ImageNet layout (with extra/)."""
    from mmengine.config import Config

    from dino_mm.datasets import dump_imagenet_extra
    from dino_mm.models.text import DINOTxt
    data = str(tmp_path / 'imagenet')
    shutil.copytree(digits_root, data)
    dump_imagenet_extra(data, osp.join(data, 'extra'), splits=('VAL', ))
    vit = dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vits16', patch_size=8,
               img_size=16, embed_dim=32, depth=2, num_heads=2)
    text = dict(dim=32, num_heads=2, num_layers=1)
    base = Config.fromfile(osp.join(
        ROOT, 'configs/dinotxt/dinov3-vitl16_dinotxt-tet1280d20h24l_zeroshot_in1k.py'))
    model_cfg = dict(base.model)
    model_cfg.pop('type')
    model_cfg.update(vision_backbone=vit, backbone_checkpoint=None, embed_dim=64,
                     text_backbone=dict(model_cfg['text_backbone'], **text))
    torch.manual_seed(0)
    model = DINOTxt(**model_cfg)
    backbone = str(tmp_path / 'backbone.pth')
    torch.save(model.visual_model.backbone.state_dict(), backbone)
    heads = str(tmp_path / 'heads.pth')
    torch.save(model.state_dict(), heads)  # no backbone keys, as the released file
    names = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine']
    preds = str(tmp_path / 'preds.pkl')
    opts = ['--cfg-options', f'test_dataloader.dataset.data_root={data}',
            'test_dataloader.batch_size=64', 'test_dataloader.num_workers=0',
            'test_dataloader.persistent_workers=False',
            'test_dataloader.dataset.pipeline.1.scale=16',
            'test_dataloader.dataset.pipeline.2.crop_size=16',
            'model.vision_backbone.arch=dinov3_vits16', 'model.vision_backbone.patch_size=8',
            'model.vision_backbone.img_size=16', 'model.vision_backbone.embed_dim=32',
            'model.vision_backbone.depth=2', 'model.vision_backbone.num_heads=2',
            'model.text_backbone.dim=32', 'model.text_backbone.num_heads=2',
            'model.text_backbone.num_layers=1', 'model.embed_dim=64',
            f'model.backbone_checkpoint={backbone}',
            f'model.zero_shot.class_names={names}', 'model.zero_shot.templates=simple']
    p = _run([PY, 'tools/test.py', base.filename, heads, '--work-dir', str(tmp_path / 'w'),
              '--out', preds, *opts], tool_env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'accuracy/top1' in p.stdout + p.stderr
    # the same scores in this process: the heads and the backbone were both loaded
    import mmengine
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope

    from dino_mm.registry import DATASETS
    dumped = mmengine.load(preds)
    init_default_scope('dino_mm')
    ds_cfg = dict(base.test_dataloader.dataset, data_root=data)
    ds_cfg['pipeline'][1]['scale'] = 16
    ds_cfg['pipeline'][2]['crop_size'] = 16
    dataset = DATASETS.build(ds_cfg)
    model.zero_shot = dict(class_names=names, templates='simple')
    model.eval()
    with torch.no_grad():
        batch = model.data_preprocessor(pseudo_collate([dataset[0], dataset[1]]), False)
        ours = model.predict(batch['inputs'], batch['data_samples'])
    for i in range(2):
        torch.testing.assert_close(torch.as_tensor(dumped[i]['pred_score']), ours[i].pred_score,
                                   rtol=1e-4, atol=1e-6)
