"""Convert a DINOv2 / DINOv3 backbone checkpoint between official, HF and timm layouts.

Examples::

    # HF hub directory (config.json + model.safetensors) -> official .pth for dino_mm
    python tools/convert/convert_checkpoint.py dinov3-vitb16-pretrain-lvd1689m/ \\
        dinov3_vitb16_official.pth --to official
    # official -> timm (safetensors)
    python tools/convert/convert_checkpoint.py dinov2_vitb14_pretrain.pth vitb14_timm.safetensors \\
        --from official --to timm

The source layout and model family are detected from the key names (``--from auto``).
DST is written atomically (DST.tmp, then renamed). A DST directory receives
``model.safetensors``; a ``.safetensors`` name is written with safetensors, any other
name with ``torch.save``.
"""
import argparse
import os.path as osp
import sys


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='.pth/.pt/.bin/.safetensors file or HF model directory')
    parser.add_argument('dst', help='output file (or existing directory)')
    parser.add_argument('--from', dest='src_layout', default='auto',
                        choices=['auto', 'official', 'hf', 'timm'], help='source layout')
    parser.add_argument('--to', dest='dst_layout', default='official',
                        choices=['official', 'hf', 'timm'], help='target layout')
    parser.add_argument('--family', default=None,
                        choices=['dinov2_vit', 'dinov3_vit', 'dinov3_convnext'],
                        help='model family (detected when omitted)')
    parser.add_argument('--head-dim', type=int, default=None,
                        help='DINOv3 attention head dim to rebuild RoPE periods (read from '
                        'config.json of a HF directory; else 64, or 128 for the 7B)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    from dino_mm.models.converters import (LayoutError, convert_state_dict, detect_layout,
                                           load_state_dict_file, save_state_dict_file)
    try:
        sd, config = load_state_dict_file(args.src)
        head_dim, rope_base = args.head_dim, 100.0
        if config and head_dim is None and 'num_attention_heads' in config:
            head_dim = config['hidden_size'] // config['num_attention_heads']
        if config.get('rope_theta'):
            rope_base = float(config['rope_theta'])
        family, layout = detect_layout(sd)
        out = convert_state_dict(sd, to=args.dst_layout, src=args.src_layout,
                                 family=args.family, head_dim=head_dim, rope_base=rope_base)
        written = save_state_dict_file(out, args.dst)
    except (LayoutError, FileNotFoundError, KeyError) as err:
        print(f'error: {args.src}: {err}', file=sys.stderr)
        return 2
    print(f'{args.src}: {family} ({layout}, {len(sd)} tensors) -> {args.dst_layout} '
          f'({len(out)} tensors) written to {written}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
