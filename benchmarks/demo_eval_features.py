"""Which feature of the demo's pretrained teacher makes the best kNN feature?

Reads a checkpoint written by ``tools/demo.py`` (default: the last one in
``work_dirs/demo_dinov2``), rebuilds the teacher backbone from the demo config and runs the
demo's kNN (T = 0.07, k = 10 / 20) on several features of the same images, next to the raw
pixels and the random initialisation:

  cls          the normalised class token (the official kNN feature; what the demo prints)
  patch-mean   the mean of the normalised patch tokens
  cls+patch    both concatenated (the official linear-probe feature with avgpool)
  cls-last4    the class tokens of the last 4 blocks, concatenated (linear-probe n=4)

Usage: python benchmarks/demo_eval_features.py [--work-dir DIR] [--checkpoint FILE]
No timing here; the figures are recorded in benchmarks/README.md.
"""
import argparse
import glob
import os.path as osp
import sys

import torch
import torch.nn.functional as F

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, osp.join(ROOT, 'tools'))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs', 'demo_dinov2'))
    parser.add_argument('--checkpoint', default=None)
    parser.add_argument('--config', default=osp.join(ROOT, 'configs/demo/dinov2_vit-tiny_digits.py'))
    parser.add_argument('--data-root', default=osp.join(ROOT, 'data', 'digits'))
    args = parser.parse_args(argv)

    from mmengine.config import Config

    from demo import load_split
    from dino_mm.evaluation import knn_evaluate
    from dino_mm.registry import MODELS
    from dino_mm.utils import register_all_modules
    register_all_modules(init_default_scope=False)

    ckpt = args.checkpoint
    if ckpt is None:
        found = sorted(glob.glob(osp.join(args.work_dir, 'iter_*.pth')),
                       key=lambda p: int(osp.basename(p)[5:-4]))
        if not found:
            raise SystemExit(f'no iter_*.pth in {args.work_dir}: run tools/demo.py first '
                             '(or pass --checkpoint)')
        ckpt = found[-1]
    cfg = Config.fromfile(args.config)
    torch.manual_seed(cfg.randomness.get('seed', 0) if cfg.get('randomness') else 0)
    random_model = MODELS.build(cfg.model)
    random_model.init_weights()
    model = MODELS.build(cfg.model)
    state = torch.load(ckpt, map_location='cpu', weights_only=True)['state_dict']
    model.load_state_dict(state)
    train = load_split(args.data_root, 'TRAIN')
    val = load_split(args.data_root, 'VAL')

    @torch.no_grad()
    def feats(backbone, kind, x):
        if backbone is not None:
            backbone.eval()
        out = []
        for i in range(0, len(x), 256):
            xb = x[i:i + 256]
            if kind == 'pixels':
                out.append(xb.flatten(1))
                continue
            layers = backbone.get_intermediate_layers(xb, n=4, return_class_token=True)
            patches, cls = layers[-1]
            if kind == 'cls':
                out.append(cls)
            elif kind == 'patch-mean':
                out.append(patches.mean(1))
            elif kind == 'cls+patch':
                out.append(torch.cat([cls, patches.mean(1)], 1))
            elif kind == 'cls-last4':
                out.append(torch.cat([F.normalize(c, dim=1) for _, c in layers], 1))
        return torch.cat(out)

    def knn(backbone, kind):
        res = knn_evaluate(feats(backbone, kind, train[0]), train[1],
                           feats(backbone, kind, val[0]), val[1], ks=(10, 20),
                           temperature=0.07, topk=(1, ))
        return res['10nn_top1'], res['20nn_top1']

    print(f'checkpoint {ckpt}')
    print(f'{"feature":<14}{"trained k=10":>14}{"k=20":>8}{"random k=10":>14}{"k=20":>8}')
    a = knn(None, 'pixels')
    print(f'{"raw pixels":<14}{a[0]:13.2f}%{a[1]:7.2f}%')
    for kind in ('cls', 'patch-mean', 'cls+patch', 'cls-last4'):
        t = knn(model.teacher['backbone'], kind)
        r = knn(random_model.teacher['backbone'], kind)
        print(f'{kind:<14}{t[0]:13.2f}%{t[1]:7.2f}%{r[0]:13.2f}%{r[1]:7.2f}%')


if __name__ == '__main__':
    main()
