"""The peer baseline of the embedded demo: a DINOv2 loop built from the `lightly` package.

    pip install lightly==1.6.0 --no-deps && pip install lightning-utilities --no-deps
    python benchmarks/lightly_peer.py [--config configs/demo/dinov2_vit-tiny_digits.py]
                                      [--max-iters N] [--seed 0]

It reads the sizes and schedules of a dino_mm demo config (backbone width / depth / heads /
patch, crop sizes, scales and counts, batch, iterations, lr / weight-decay / teacher
temperature / teacher momentum schedules, head sizes, loss weights, masking) and trains the
same recipe with lightly's pieces instead of dino_mm's: its DINO / iBOT / KoLeo losses, its
DINOv2 projection head, its DINO transform, its block masking, and timm's ViT wrapped in
lightly's masked ViT. The data are the same files (``data/digits``, written by
``tools/demo.py``). It then prints the kNN top-1 of the trained teacher with the demo's
protocol (:func:`dino_mm.evaluation.knn_evaluate`, class token, T=0.07), and the kNN of the
raw pixels of the same images.

lightly is a benchmark-only dependency: nothing in dino_mm imports it.
"""
import argparse
import math
import os.path as osp
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, osp.join(ROOT, 'tools'))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--config', default=osp.join(ROOT, 'configs/demo/dinov2_vit-tiny_digits.py'))
    p.add_argument('--data-root', default=osp.join(ROOT, 'data', 'digits'))
    p.add_argument('--max-iters', type=int, default=None)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--ks', type=int, nargs='+', default=[10, 20])
    return p.parse_args(argv)


def recipe(cfg, max_iters=None) -> dict:
    """The numbers of the dino_mm demo config that the peer loop reuses."""
    m, dl = cfg.model, cfg.train_dataloader
    crop = [t for t in dl.dataset.pipeline if 'MultiCrop' in t['type']][0]
    sched = {s['param_name']: s for s in cfg.param_scheduler}
    hooks = {h['type'].split('.')[-1]: h for h in cfg.custom_hooks}
    iters = max_iters or cfg.train_cfg.max_iters
    scale = iters / cfg.train_cfg.max_iters
    lr = sched['lr']
    lr_peak = lr['base_value'] * math.sqrt(dl.batch_size / 1024)  # sqrt_wrt_1024
    temp = hooks['TeacherTempHook']
    mom = hooks['TeacherMomentumHook']
    quirk = crop.get('official_blur_quirk', True)
    blur = [1.0 - p if quirk else p for p in crop.get('blur_probabilities', (1.0, 0.1, 0.5))]
    return dict(
        blur=tuple(blur), blur_sigma=tuple(crop.get('blur_sigma', (0.1, 2.0))),
        solarize=crop.get('solarize_probability', 0.2),
        jitter=crop.get('color_jitter_probability', 0.8),
        embed_dim=m.backbone.embed_dim, depth=m.backbone.depth, num_heads=m.backbone.num_heads,
        patch_size=m.backbone.patch_size, drop_path=m.backbone.drop_path_rate,
        global_size=crop['global_crops_size'], local_size=crop['local_crops_size'],
        global_scale=tuple(crop['global_crops_scale']),
        local_scale=tuple(crop['local_crops_scale']), n_local=crop['local_crops_number'],
        batch_size=dl.batch_size, iters=iters, lr_peak=lr_peak, lr_end=lr['final_value'],
        warmup=int(lr['warmup_iters'] * scale),
        freeze_last=int(lr.get('freeze_last_layer_iters', 0) * scale),
        wd=(sched['weight_decay']['base_value'], sched['weight_decay']['final_value']),
        t_warm=(temp['warmup_teacher_temp'], temp['teacher_temp']),
        t_warm_iters=int(temp['warmup_iters'] * scale),
        momentum=(mom['momentum_teacher'], mom['final_momentum_teacher']),
        out_dim=m.dino_head.out_dim, hidden_dim=m.dino_head.hidden_dim,
        bottleneck_dim=m.dino_head.bottleneck_dim, student_temp=m.get('student_temp', 0.1),
        koleo_w=m.get('koleo_loss_weight', 0.1), ibot_w=m.get('ibot_loss_weight', 1.0),
        clip_grad=m.get('clip_grad', 3.0),
        mask_ratio=tuple(dl.collate_fn.get('mask_ratio_min_max', (0.1, 0.5))),
        mask_prob=dl.collate_fn.get('mask_probability', 0.5))


def cosine(step, total, start, end, warmup=0):
    if step < warmup:  # linear warm-up from 0, as the demo's DINOCosineParamScheduler
        return start * step / warmup
    t = (step - warmup) / max(1, total - warmup)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * t))


def train_peer(r: dict, data_root: str, seed: int = 0, log=print):
    """Train the lightly/timm DINOv2 loop; return the teacher backbone (lightly masked ViT)."""
    import torch
    from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss
    from lightly.models.modules import MaskedVisionTransformerTIMM
    from lightly.models.modules.heads import DINOProjectionHead
    from lightly.models.utils import random_block_mask, update_momentum
    from lightly.transforms import DINOTransform
    from PIL import Image
    from timm.models.vision_transformer import VisionTransformer

    from dino_mm.datasets import ImageNet
    def build():
        vit = VisionTransformer(img_size=r['global_size'], patch_size=r['patch_size'],
                                embed_dim=r['embed_dim'], depth=r['depth'],
                                num_heads=r['num_heads'], num_classes=0,
                                dynamic_img_size=True, drop_path_rate=r['drop_path'])
        return torch.nn.ModuleDict(dict(
            backbone=MaskedVisionTransformerTIMM(vit=vit),
            head=DINOProjectionHead(r['embed_dim'], r['hidden_dim'], r['bottleneck_dim'],
                                    r['out_dim'], freeze_last_layer=r['freeze_last'])))

    torch.manual_seed(seed)
    student = build()
    teacher = build()  # weight_norm modules cannot be deep-copied: build and copy weights
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)

    transform = DINOTransform(global_crop_size=r['global_size'], global_crop_scale=r['global_scale'],
                              local_crop_size=r['local_size'], local_crop_scale=r['local_scale'],
                              n_local_views=r['n_local'], gaussian_blur=r['blur'],
                              sigmas=r['blur_sigma'], solarization_prob=r['solarize'],
                              cj_prob=r['jitter'])
    ds = ImageNet(split='TRAIN', data_root=data_root, pipeline=[], lazy_init=False)
    paths = [ds.get_data_info(i)['img_path'] for i in range(len(ds))]
    images = [Image.open(p).convert('RGB') for p in paths]

    class Views(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(images[i])

    g = torch.Generator().manual_seed(seed)
    sampler = torch.utils.data.RandomSampler(Views(), replacement=True,
                                             num_samples=r['iters'] * r['batch_size'],
                                             generator=g)
    loader = torch.utils.data.DataLoader(Views(), batch_size=r['batch_size'], sampler=sampler,
                                         num_workers=2, drop_last=True,
                                         collate_fn=lambda b: [torch.stack(v) for v in zip(*b)])
    dino_loss = DINOLoss(output_dim=r['out_dim'], student_temp=r['student_temp'])
    ibot_loss = IBOTPatchLoss(output_dim=r['out_dim'], student_temp=r['student_temp'])
    koleo = KoLeoLoss()
    decay = [p for n, p in student.named_parameters() if p.ndim > 1 and 'pos_embed' not in n
             and 'token' not in n]
    no_decay = [p for n, p in student.named_parameters()
                if not (p.ndim > 1 and 'pos_embed' not in n and 'token' not in n)]
    opt = torch.optim.AdamW([dict(params=decay), dict(params=no_decay, weight_decay=0.0)],
                            lr=r['lr_peak'])
    grid = r['global_size'] // r['patch_size']
    t0 = time.time()
    for step, views in enumerate(loader):
        lr = cosine(step, r['iters'], r['lr_peak'], r['lr_end'], r['warmup'])
        wd = cosine(step, r['iters'], r['wd'][0], r['wd'][1])
        opt.param_groups[0].update(lr=lr, weight_decay=wd)
        opt.param_groups[1].update(lr=lr)
        t_temp = (r['t_warm'][0] + (r['t_warm'][1] - r['t_warm'][0]) * step / r['t_warm_iters']
                  if step < r['t_warm_iters'] else r['t_warm'][1])
        mom = cosine(step, r['iters'], r['momentum'][0], r['momentum'][1])
        g_views = torch.cat(views[:2])
        l_views = torch.cat(views[2:])
        B = g_views.shape[0]
        mask = random_block_mask(size=(B, grid, grid), batch_mask_ratio=r['mask_prob'],
                                 min_image_mask_ratio=r['mask_ratio'][0],
                                 max_image_mask_ratio=r['mask_ratio'][1],
                                 # lightly refuses blocks smaller than 4 patches, which a
                                 # 4x4 grid at 10 % asks for
                                 min_num_masks_per_block=1)
        with torch.no_grad():
            t_tok = teacher['backbone'].encode(g_views)
            t_cls = teacher['head'](t_tok[:, 0])
            t_patch = teacher['head'](t_tok[:, 1:][mask.flatten(1)])
        seq_mask = torch.cat([torch.zeros(B, 1, dtype=torch.bool), mask.flatten(1)], 1)
        s_tok = student['backbone'].encode(g_views, mask=seq_mask)  # no mask on the class token
        s_cls = student['head'](s_tok[:, 0])
        s_patch = student['head'](s_tok[:, 1:][mask.flatten(1)])
        s_loc = student['head'](student['backbone'].encode(l_views)[:, 0])
        loss_dino = dino_loss(list(t_cls.chunk(2)),
                              list(s_cls.chunk(2)) + list(s_loc.chunk(r['n_local'])),
                              teacher_temp=t_temp)
        loss_ibot = ibot_loss(t_patch, s_patch, mask=mask, teacher_temp=t_temp)
        loss_koleo = sum(koleo(c) for c in s_tok[:, 0].chunk(2))
        loss = loss_dino + r['ibot_w'] * loss_ibot + r['koleo_w'] * loss_koleo
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student['backbone'].parameters(), r['clip_grad'])
        torch.nn.utils.clip_grad_norm_(student['head'].parameters(), r['clip_grad'])
        student['head'].cancel_last_layer_gradients(step)
        opt.step()
        update_momentum(student, teacher, m=mom)
        if step % 50 == 0 or step == r['iters'] - 1:
            log(f'[peer] iter {step + 1}/{r["iters"]}  loss {loss.item():.4f}  dino '
                f'{loss_dino.item():.4f}  ibot {loss_ibot.item():.4f}  koleo '
                f'{loss_koleo.item():.4f}  ({time.time() - t0:.0f} s)')
    return teacher['backbone']


def peer_features(backbone):
    import torch

    @torch.no_grad()
    def features(x):
        backbone.eval()
        return torch.cat([backbone.encode(x[i:i + 256])[:, 0] for i in range(0, len(x), 256)])
    return features


def main(argv=None):
    args = parse_args(argv)
    import torch
    from mmengine.config import Config

    from demo import ensure_dataset, load_split
    from dino_mm.evaluation import knn_evaluate
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = Config.fromfile(args.config)
    ensure_dataset(args.data_root, 32)
    r = recipe(cfg, args.max_iters)
    t0 = time.time()
    backbone = train_peer(r, args.data_root, seed=args.seed)
    t_train = time.time() - t0
    train, val = load_split(args.data_root, 'TRAIN'), load_split(args.data_root, 'VAL')
    feats = peer_features(backbone)
    res = knn_evaluate(feats(train[0]), train[1], feats(val[0]), val[1], ks=args.ks,
                       temperature=0.07, topk=(1, ))
    raw = knn_evaluate(train[0].flatten(1), train[1], val[0].flatten(1), val[1], ks=args.ks,
                       temperature=0.07, topk=(1, ))
    print(f'[peer] lightly/timm DINOv2 loop, {r["iters"]} iterations in {t_train:.0f} s')
    for k in args.ks:
        print(f'  k={k}: peer teacher {res[f"{k}nn_top1"]:.2f}%   raw pixels '
              f'{raw[f"{k}nn_top1"]:.2f}%')
    return dict(peer={k: res[f'{k}nn_top1'] for k in args.ks},
                raw={k: raw[f'{k}nn_top1'] for k in args.ks}, seconds=t_train)


if __name__ == '__main__':
    main()
