"""Write the leaf segmentation configs (run from anywhere: ``python generate_configs.py``).

Every leaf only states what differs from its bases: the backbone arch and layers, the
head widths, the dataset and the schedule, plus the published mIoU in a comment.
"""
import os.path as osp
import sys
from typing import Dict, List, Tuple

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, osp.dirname(HERE))
from generate_utils import backbone_spec, stamp  # noqa: E402

# name: (arch, embed_dim, depth, backbone file name), read from dino_mm (its ViT table and
# the hub's official file names), so the leaves cannot drift from the models.
DINOV2 = {n: backbone_spec(f'dinov2_{n}') for n in ('vits14', 'vitb14', 'vitl14', 'vitg14')}
DINOV3 = {n: backbone_spec(f'dinov3_{n}')
          for n in ('vits16', 'vits16plus', 'vitb16', 'vitl16', 'vith16plus', 'vit7b16')}
# Published mIoU, each with its source (docs/reference.md §5.11). The DINOv2 README lists only
# the head files; its model card gives the multiscale ADE20K figures. The DINOv2 linear ADE20K
# and all VOC2012 figures are in the DINOv2 paper only, whose table could not be read here, so
# those leaves say "none in the README or model card" instead of quoting a number.
PUBLISHED: Dict[Tuple[str, str, str], str] = {
    ('vits14', 'ms', 'ade20k'): '47.2 (DINOv2 model card, multiscale)',
    ('vitb14', 'ms', 'ade20k'): '51.3 (DINOv2 model card, multiscale)',
    ('vitl14', 'ms', 'ade20k'): '53.1 (DINOv2 model card, multiscale)',
    ('vitg14', 'ms', 'ade20k'): '53.0 (DINOv2 model card, multiscale)',
    ('vits16', 'linear', 'ade20k'): '47.0 (DINOv3 model card)',
    ('vits16plus', 'linear', 'ade20k'): '48.8 (DINOv3 model card)',
    ('vitb16', 'linear', 'ade20k'): '51.8 (DINOv3 model card)',
    ('vitl16', 'linear', 'ade20k'): '54.9 (DINOv3 model card)',
    ('vith16plus', 'linear', 'ade20k'): '54.8 (DINOv3 model card)',
    ('vit7b16', 'linear', 'ade20k'): '55.9 (DINOv3 model card)',
}
DATASETS = {'ade20k': ('ade20k.py', 150), 'voc12': ('voc12.py', 21)}


def head_leaf(version: str, name: str, head: str, data: str) -> Tuple[str, str]:
    arch, dim, depth, ckpt = (DINOV2 if version == 'dinov2' else DINOV3)[name]
    n_layers = 1 if head == 'linear' else 4
    indices = list(range(depth - n_layers, depth))
    data_file, num_classes = DATASETS[data]
    size = 512
    if head == 'ms':  # the official "+ms" recipe trains and tests with 640 px crops
        size = 640
        data_file = data_file.replace('.py', '_640x640.py')
    schedule = f'seg_{version}_40k.py'
    if (name, head, data) in PUBLISHED:
        published = PUBLISHED[(name, head, data)]
    elif version == 'dinov2':
        published = 'none in the DINOv2 README or model card (paper table not checked)'
    else:
        published = 'none published'
    desc = ('BN + 1x1 conv on the last layer' if head == 'linear' else
            'BN + 1x1 conv on the last 4 layers, multi-scale + flip TTA')
    lines = [
        f'# {version.upper()} {name} frozen, {desc}, {data}.',
        f'# Published mIoU: {published}.',
        f'# Backbone weights: checkpoints/{ckpt} (official layout, see dino_mm.hub).',
        '_base_ = [',
        f"    '../../_base_/models/seg_{head}.py', '../../_base_/datasets/{data_file}',",
        f"    '../../_base_/schedules/{schedule}'",
        ']',
        'model = dict(',
        '    backbone=dict(',
        f"        arch='{arch}', out_indices={indices},",
        f"        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/{ckpt}')),",
        '    decode_head=dict(',
        f'        in_channels={[dim] * n_layers}, in_index={list(range(n_layers))},',
        f'        channels={dim * n_layers}, num_classes={num_classes}'
        + (',\n        dropout_ratio=0.1))  # Dropout2d 0.1: dinov3 eval/segmentation LinearHead'
           if version == 'dinov3' else '))'),
    ]
    fname = f'{version}-{name}_{head}_8xb2-40k_{data}-{size}x{size}.py'
    return fname, '\n'.join(lines) + '\n'


M2F_TEST_896 = """test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(3584, 896), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='dino_mm.CheckSegAnnotation', num_classes=150),
    dict(type='PackSegInputs')
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
"""


def m2f_leaf(version: str, name: str) -> Tuple[str, str]:
    arch, dim, depth, ckpt = (DINOV2 if version == 'dinov2' else DINOV3)[name]
    quarter = depth // 4
    indices = [quarter * (i + 1) - 1 for i in range(4)]
    if version == 'dinov2':
        # Not in the DINOv2 README or model card; Papers with Code lists it from the paper.
        published = '60.2 (DINOv2 paper, frozen ViT-g + ViT-Adapter + M2F)'
        # The original ViT-Adapter (injectors; dinov2/eval/segmentation_m2f) with the
        # ViT-Adapter repository's 40-block / 1536-wide Mask2Former recipe (block ranges,
        # 24 deformable heads, 1024-wide head with 32 attention heads, FFN 4096, 200
        # queries); the hosted dinov2_vitg14_ade20k_m2f_config.py could not be read here.
        heads, width, ffn, attn_heads, queries, extra = 24, 1024, 4096, 32, 200, ''
        adapter = "type='dino_mm.ViTAdapter',\n        "
        # Gradients flow through the frozen ViT to the injectors: checkpoint its blocks.
        vit_extra = 'with_cp=True, '
        adapter_extra = ''
        indices = [[quarter * i, quarter * (i + 1) - 1] for i in range(4)]
        test = "mode='slide', crop_size=(512, 512), stride=(341, 341)"
    else:
        published = 'none in the dinov3 README (DINOv3 paper table not checked)'
        # The official DINOv3 segmentor's fixed sizes (dino_mm.hub.segmentors.V3_M2F_SIZES):
        # 16 deformable heads, 16 attention heads, FFN 4096, 100 queries.
        heads, width, attn_heads, queries, adapter, ffn = 16, 2048, 16, None, '', 4096
        # DINOv3_Adapter's default drop_path_rate (the official builder keeps it).
        vit_extra, adapter_extra = '', ', drop_path_rate=0.3'

        # docs/reference.md §5.6: hidden_dim 2048, eval 896 px slide (stride 596) with TTA ratios.
        test = ("mode='slide', crop_size=(896, 896), stride=(596, 596),\n"
                '        img_ratios=[0.9, 0.95, 1.0, 1.05, 1.1]')
        extra = M2F_TEST_896
    attn = f', num_heads={attn_heads}' if attn_heads else ''
    lines = [
        f'# {version.upper()} {name} (frozen) + ViT-Adapter + Mask2Former, ADE20K.',
        f'# Published mIoU: {published}.',
        f'# Backbone weights: checkpoints/{ckpt}.',
        '_base_ = [',
        "    '../../_base_/models/seg_m2f.py', '../../_base_/datasets/ade20k.py',",
        "    '../../_base_/schedules/seg_m2f_80k.py'",
        ']',
        "custom_imports = dict(imports=['mmdet.models', 'dino_mm.datasets.segmentation'],",
        '                      allow_failed_imports=False)',
        'model = dict(',
        '    backbone=dict(',
        f"        {adapter}backbone=dict(arch='{arch}', {vit_extra}init_cfg=dict(",
        f"            type='Pretrained', checkpoint='checkpoints/{ckpt}')),",
        f'        interaction_indexes={indices}, deform_num_heads={heads}{adapter_extra}),',
        '    decode_head=dict(',
        f'        in_channels={[dim] * 4}',
    ]
    if width != 256:
        lines[-1] += ','
        if queries:
            lines += [f'        num_queries={queries},']
        lines += [
            f'        feat_channels={width}, out_channels={width},',
            '        pixel_decoder=dict(',
            f'            encoder=dict(layer_cfg=dict(self_attn_cfg=dict(embed_dims={width}'
            f'{attn}),',
            f'                                        ffn_cfg=dict(embed_dims={width},',
            f'                                                     '
            f'feedforward_channels={ffn}))),',
            f'            positional_encoding=dict(num_feats={width // 2})),',
            f'        positional_encoding=dict(num_feats={width // 2}),',
            '        transformer_decoder=dict(layer_cfg=dict(',
            f'            self_attn_cfg=dict(embed_dims={width}{attn}),',
            f'            cross_attn_cfg=dict(embed_dims={width}{attn}),',
            f'            ffn_cfg=dict(embed_dims={width}, feedforward_channels={ffn})))',
        ]
    lines[-1] += '),'
    lines.append(f'    test_cfg=dict({test}))')
    fname = f'{version}-{name}_vit-adapter-m2f_8xb2-80k_ade20k-512x512.py'
    return fname, '\n'.join(lines) + '\n' + extra


def main() -> List[str]:
    import os
    written = []
    jobs = [(v, n, h, d) for v, table in (('dinov2', DINOV2), ('dinov3', DINOV3))
            for n in table for h in ('linear', 'ms') for d in DATASETS]
    outputs = [(v, *head_leaf(v, n, h, d)) for v, n, h, d in jobs]
    outputs += [('dinov2', *m2f_leaf('dinov2', 'vitg14')),
                ('dinov3', *m2f_leaf('dinov3', 'vit7b16'))]
    for version, fname, text in outputs:
        os.makedirs(osp.join(HERE, version), exist_ok=True)
        path = osp.join(HERE, version, fname)
        with open(path, 'w') as f:
            f.write(stamp(text, 'configs/segmentation/generate_configs.py'))
        written.append(path)
    return written


if __name__ == '__main__':
    print('\n'.join(main()))
