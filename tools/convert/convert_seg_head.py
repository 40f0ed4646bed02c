"""Convert an official DINOv2 / DINOv3 linear segmentation head into a dino_mm checkpoint.

Examples::

    # DINOv2 head (keys decode_head.bn.*, decode_head.conv_seg.*) + its backbone
    python tools/convert/convert_seg_head.py dinov2_vits14_ade20k_linear_head.pth \\
        work_dirs/dinov2_vits14_ade20k_linear.pth --backbone dinov2_vits14_pretrain.pth
    # DINOv3 linear head (keys batchnorm_layer.*, conv.*)
    python tools/convert/convert_seg_head.py head.pth out.pth

The output ``{'state_dict': ..., 'meta': {...}}`` loads into the matching
``configs/segmentation`` model with ``tools/test.py CONFIG out.pth``.
"""
import argparse
import os.path as osp
import sys


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='official head checkpoint (local file)')
    parser.add_argument('dst', help='output dino_mm checkpoint')
    parser.add_argument('--backbone', default=None,
                        help='official backbone checkpoint to merge under backbone.')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    from dino_mm.models.segmentation.checkpoint import build_segmentor_state_dict
    state = build_segmentor_state_dict(args.src, args.backbone)
    from dino_mm.engine.checkpoint import atomic_torch_save
    atomic_torch_save({'state_dict': state,
                       'meta': {'converted_from': osp.basename(args.src),
                                'backbone': osp.basename(args.backbone) if args.backbone
                                else None}}, args.dst)
    n_head = sum(not k.startswith('backbone.') for k in state)
    print(f'wrote {args.dst}: {n_head} head tensors, {len(state) - n_head} backbone tensors')
    return 0


if __name__ == '__main__':
    sys.exit(main())
