"""Write the depth leaf configs (backbone x head x dataset). Run from the repository root:
``python configs/depth/generate_configs.py``. Leaves only state what differs from the bases."""
import os.path as osp
import sys

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, osp.dirname(HERE))
from generate_utils import backbone_spec, stamp  # noqa: E402

# name: (arch, embed dim, depth, 4-layer indices, published NYU RMSE for linear4 / linear);
# arch, width and depth come from dino_mm's ViT table, the layer indices and RMSE are the
# official depth heads'.
_HEADS = {
    'dinov2-vits14': ([2, 5, 8, 11], 0.417),
    'dinov2-vitb14': ([2, 5, 8, 11], 0.362),
    'dinov2-vitl14': ([4, 11, 17, 23], 0.333),
    'dinov2-vitg14': ([9, 19, 29, 39], 0.298),
    'dinov3-vits16': ([2, 5, 8, 11], 0.403),
    'dinov3-vitb16': ([2, 5, 8, 11], 0.373),
    'dinov3-vitl16': ([4, 11, 17, 23], 0.352),
    'dinov3-vit7b16': ([9, 19, 29, 39], 0.309),
}
_SPECS = {name: backbone_spec(name.replace('-', '_')) for name in _HEADS}
V2 = {n: (*_SPECS[n][:3], *_HEADS[n]) for n in _HEADS if n.startswith('dinov2')}
V3 = {n: (*_SPECS[n][:3], *_HEADS[n]) for n in _HEADS if n.startswith('dinov3')}
GENERATOR = 'configs/depth/generate_configs.py'
DATASETS = {'nyu': ('nyu.py', 10.0), 'kitti': ('kitti.py', 80.0)}
# Official backbone files (LVD-142M / LVD-1689M, as dino_mm.hub.BACKBONE_WEIGHTS). Like the
# segmentation configs, the leaves name checkpoints/<file>; DinoVisionTransformer.init_weights
# also finds the file in $DINO_MM_WEIGHTS / ~/.cache/dino_mm/weights and fails naming it.
WEIGHTS = {name: spec[3] for name, spec in _SPECS.items()}


def published(name, head, data, rmse, v3):
    if data != 'nyu':
        return '# Published KITTI numbers: not stated in the official repositories (paper only).'
    if v3 and head == 'linear':
        return f'# Published: NYU-D RMSE {rmse} (DINOv3 model card, linear probe, frozen backbone).'
    if not v3 and head == 'linear4':
        return f'# Published: NYU-D RMSE {rmse} (DINOv2 model card, linear head on 4 layers).'
    return ('# Published: no number in the official repositories for this head\n'
            f'# (reference: {"linear" if v3 else "linear4"} NYU-D RMSE {rmse}).')


def leaf(name, spec, head, data, v3):
    arch, dim, depth, four, rmse = spec
    idx = four if head in ('linear4', 'dpt') else [depth - 1]
    base_model = 'depth_dpt.py' if head == 'dpt' else 'depth_linear.py'
    ds_file, max_depth = DATASETS[data]
    ckpt = WEIGHTS[name]
    init = f"init_cfg=dict(type='Pretrained', checkpoint='checkpoints/{ckpt}')"
    lines = [
        f'# {name} frozen backbone, {head} depth head, {data.upper()}.',
        published(name, head, data, rmse, v3),
        f'# Backbone weights: checkpoints/{ckpt} (official layout, see dino_mm.hub).',
        "_base_ = ['../_base_/models/%s', '../_base_/datasets/%s',\n"
        "          '../_base_/schedules/depth_38k.py']" % (base_model, ds_file),
    ]
    if v3:
        # DINOv3 protocol: backbone norm on, no class token, BatchNorm in the head.
        bb = (f"backbone=dict(arch='{arch}', out_indices={idx},\n"
              "                  out_type='featmap', norm_out=True,\n"
              f'                  {init})')
        if head == 'dpt':
            ppc = min(dim, 2048)
            ch = 512 if dim > 2048 else 256
            hd = (f'decode_head=dict(embed_dims={dim}, post_process_channels=[{ppc}] * 4,\n'
                  f"                     channels={ch}, readout_type='ignore', patch_size=16,\n"
                  "                     norm_cfg=dict(type='SyncBN'), classify=True, n_bins=256,"
                  f'\n                     max_depth={max_depth})')
        else:
            hd = (f'decode_head=dict(in_channels=[{dim}] * {len(idx)}, '
                  f'in_index={list(range(len(idx)))},\n'
                  f"                     norm_cfg=dict(type='SyncBN'), max_depth={max_depth})")
    else:
        bb = (f"backbone=dict(arch='{arch}', out_indices={idx},\n"
              f'                  {init})')
        if head == 'dpt':
            ppc = [dim // 8, dim // 4, dim // 2, dim]
            hd = (f'decode_head=dict(embed_dims={dim}, post_process_channels={ppc}, '
                  f'max_depth={max_depth})')
        else:
            hd = (f'decode_head=dict(in_channels=[{2 * dim}] * {len(idx)}, '
                  f'in_index={list(range(len(idx)))}, max_depth={max_depth})')
    lines.append(f'model = dict(\n    {bb},\n    {hd})')
    return '\n'.join(lines) + '\n'


# CHMv2 (official hub entry dinov3_vitl16_chmv2, dinov3/hub/depthers.py): SAT-493M ViT-L/16,
# its official head file, and the normalisation of notebooks/chmv2_inference.ipynb.
CHMV2_BACKBONE = 'dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth'
CHMV2_HEAD = 'dinov3_vitl16_chmv2_dpt_head-3703d643.pth'
CHMV2_MEAN = (0.420, 0.411, 0.296)
CHMV2_STD = (0.213, 0.156, 0.143)


def chmv2_leaf():
    """The CHMv2 leaf: official inference / evaluation, and fine-tuning on your tiles (the
    CHMv2 training recipe is not published; dino_mm's depth recipe is used)."""
    mean = [round(255 * m, 6) for m in CHMV2_MEAN]  # the 0-255 scale of the preprocessor
    std = [round(255 * s, 6) for s in CHMV2_STD]
    return f"""# dinov3-vitl16 (SAT-493M) + CHMv2 DPT head: canopy height in metres from RGB
# satellite / aerial tiles (official dinov3_vitl16_chmv2).
# Data layout: see ../_base_/datasets/canopy_height.py ("rgb_path chm_path" lists, RGB tiles
# and GeoTIFF heights in metres with nodata / mask band). Weights, official files (also
# found in $DINO_MM_WEIGHTS):
#   checkpoints/{CHMV2_BACKBONE} (backbone)
#   checkpoints/{CHMV2_HEAD} (head)
# Evaluate the released model: python tools/test.py <this config> none  (both files load
#   through init_cfg; MAE / RMSE / bias / R2 / block R2).
# Fine-tune the head on your tiles: python tools/train.py <this config>  (frozen backbone,
#   head initialised from the official file, SigLoss + GradientLoss of the DPT depth leaves,
#   256 px crops, the depth_38k schedule: dino_mm choices, as no CHMv2 recipe is published).
# As the official notebook: RGB/255 normalised with mean {CHMV2_MEAN} and std
# {CHMV2_STD}, center padding to 16 px, whole-image prediction resized to the input size.
_base_ = ['../_base_/schedules/depth_38k.py', '../_base_/datasets/canopy_height.py']
model = dict(
    type='dino_mm.DinoDepthEstimator',
    data_preprocessor=dict(type='dino_mm.DepthDataPreProcessor',
                           mean={mean},
                           std={std}),
    pad_to_patch='auto',
    freeze_backbone=True,
    backbone=dict(
        type='dino_mm.DinoVisionTransformer', arch='dinov3_vitl16',
        out_indices=[5, 11, 17, 23], out_type='cls_featmap', norm_out=True,
        # the SAT-493M file keeps its (training-only) local-crop class-token norm
        untie_global_and_local_cls_norm=True,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/{CHMV2_BACKBONE}')),
    decode_head=dict(
        type='dino_mm.DPTDepthHead', embed_dims=1024,
        post_process_channels=[128, 256, 512, 1024], channels=256, readout_type='project',
        patch_size=16, use_bias=True, projection_after_fusion=False, n_hidden_channels=128,
        output_align_corners=True, classify=True, n_bins=256, bins_strategy='chmv2_mixlog',
        norm_strategy='chmv2_mixlog', min_depth=0.001, max_depth=96.0,
        loss_decode=[
            dict(type='dino_mm.SigLoss', valid_mask=True, loss_weight=1.0, warm_up=True),
            dict(type='dino_mm.GradientLoss', valid_mask=True, loss_weight=0.5),
        ],
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/{CHMV2_HEAD}')),
    train_cfg=dict(),
    test_cfg=dict(mode='whole', flip=False))
"""


def main():
    written = []
    for family, v3 in ((V2, False), (V3, True)):
        for name, spec in family.items():
            for head in ('linear', 'linear4', 'dpt'):
                for data in DATASETS:
                    fname = f'{name}_{head}_8xb2-38k_{data}.py'
                    with open(osp.join(HERE, fname), 'w') as f:
                        f.write(stamp(leaf(name, spec, head, data, v3), GENERATOR))
                    written.append(fname)
    fname = 'dinov3-vitl16_chmv2_canopy-height.py'
    with open(osp.join(HERE, fname), 'w') as f:
        f.write(stamp(chmv2_leaf(), GENERATOR))
    written.append(fname)
    print(f'wrote {len(written)} configs')


if __name__ == '__main__':
    main()
