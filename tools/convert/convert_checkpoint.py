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

``--to hf`` for a ViT writes a HF model folder that ``transformers`` loads with
``AutoModel.from_pretrained(DST)`` (``Dinov2Model`` / ``Dinov2WithRegistersModel`` /
``DINOv3ViTModel``): DST is a folder (created when it has no file suffix) that receives
``model.safetensors`` and a ``config.json`` built from the architecture (sizes from the
tensor shapes; the head dim is 64, 128 for the 7B, or ``--head-dim``). A DST file named
``model.safetensors`` / ``pytorch_model.bin`` gets the ``config.json`` next to it.

    python tools/convert/convert_checkpoint.py dinov2_vits14_pretrain.pth vits14_hf/ --to hf

DINOv3 ``local_cls_norm`` (ViT-7B and SAT-493M ViT-L, ``untie_global_and_local_cls_norm``)
is a training-only norm that HF and timm files do not store (the official model never uses
it at eval). Converting a HF / timm DINOv3 ViT to ``official`` adds it as a copy of the
final ``norm`` for the 7B (hidden size 4096) and says so; ``--local-cls-norm`` adds it for
any other model (e.g. the SAT-493M ViT-L), ``--no-local-cls-norm`` never does. Eval outputs
do not depend on it.
"""
import argparse
import json
import os
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
    parser.add_argument('--local-cls-norm', dest='local_cls_norm', default=None,
                        action=argparse.BooleanOptionalAction,
                        help='HF/timm DINOv3 ViT -> official: add the training-only '
                        'local_cls_norm (a copy of the final norm) that those files lack, as '
                        'models built with untie_global_and_local_cls_norm=True need (default: '
                        'only for the 7B, hidden size 4096)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    from dino_mm.engine.checkpoint import CheckpointError
    from dino_mm.models.converters import (LayoutError, convert_state_dict, detect_layout,
                                           hf_config_from_state_dict, load_state_dict_file,
                                           save_state_dict_file)
    config_path = None
    try:
        sd, config = load_state_dict_file(args.src)
        head_dim, rope_base = args.head_dim, 100.0
        if config and head_dim is None and 'num_attention_heads' in config:
            head_dim = config['hidden_size'] // config['num_attention_heads']
        if config.get('rope_theta'):
            rope_base = float(config['rope_theta'])
        family, layout = detect_layout(sd)
        out = convert_state_dict(sd, to=args.dst_layout, src=args.src_layout,
                                 family=args.family, head_dim=head_dim, rope_base=rope_base,
                                 local_cls_norm=args.local_cls_norm)
        dst = osp.expanduser(args.dst)
        hf_config = None
        if args.dst_layout == 'hf' and (args.family or family) != 'dinov3_convnext':
            hf_config = hf_config_from_state_dict(sd, family=args.family, head_dim=head_dim,
                                                  rope_base=rope_base)
            if not osp.splitext(dst.rstrip('/'))[1]:
                os.makedirs(dst, exist_ok=True)  # a HF model folder
        written = save_state_dict_file(out, dst)
        if hf_config is not None and osp.basename(written) in ('model.safetensors',
                                                               'pytorch_model.bin'):
            config_path = osp.join(osp.dirname(written), 'config.json')
            with open(config_path + '.tmp', 'w') as f:
                json.dump(hf_config, f, indent=2, sort_keys=True)
            os.replace(config_path + '.tmp', config_path)
    except (LayoutError, CheckpointError, FileNotFoundError, KeyError) as err:
        print(f'error: {args.src}: {err}', file=sys.stderr)
        return 2
    print(f'{args.src}: {family} ({layout}, {len(sd)} tensors) -> {args.dst_layout} '
          f'({len(out)} tensors) written to {written}')
    had_local = 'local_cls_norm.weight' in sd
    if 'local_cls_norm.weight' in out and not had_local:
        print(f'note: the {layout} file has no local_cls_norm (training-only, unused at eval '
              f'by the official model); it was filled in as a copy of the final norm, so '
              f'the result loads strictly into a model with '
              f'untie_global_and_local_cls_norm=True (e.g. dinov3_vit7b16) and its eval '
              f'outputs are unchanged (--no-local-cls-norm leaves it out).')
    elif (args.dst_layout == 'official' and layout in ('hf', 'timm')
          and (args.family or family) == 'dinov3_vit' and args.local_cls_norm is None):
        print('note: no local_cls_norm was added (not a 7B); if the target model uses '
              'untie_global_and_local_cls_norm=True (e.g. the SAT-493M ViT-L), rerun with '
              '--local-cls-norm.')
    elif had_local and 'local_cls_norm.weight' not in out:
        print(f'note: local_cls_norm (training-only, unused at eval) has no {args.dst_layout} '
              f'counterpart and was left out.')
    if config_path is not None:
        print(f'HF config ({hf_config["model_type"]}) written to {config_path}: '
              f'transformers.AutoModel.from_pretrained({osp.dirname(written)!r}) loads it')
    elif hf_config is not None:
        print(f'note: no config.json written; to load with transformers '
              f'(from_pretrained), give a folder as DST instead of {args.dst!r}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
