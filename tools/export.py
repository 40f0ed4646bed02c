"""Export a backbone to TorchScript and/or ONNX as ``images -> (cls token, patch tokens)``.

Outputs are checked against the eager model at ``--check-sizes`` (TorchScript always,
ONNX when onnxruntime is installed) and the largest absolute differences printed. The
default sizes are the example size and one 4 patches larger per side (224 -> 280 for
DINOv2), so a graph that only works at the traced size is caught. The tool exits with
status 1 when a check fails (a difference above ``--atol``, or a size the exported model
cannot run).

Example::

    python tools/export.py --arch dinov3_vits16 --weights dinov3_vits16_pretrain.pth \\
        --format torchscript onnx --out work_dirs/export/dinov3_vits16 \\
        --example-size 224 224 --check-sizes 224,224 320,480
"""
import argparse
import json
import sys
from typing import Any, Dict, List, Optional, Tuple

from dino_mm.apis import (build_backbone, export_onnx, export_torchscript, max_abs_diff,
                          onnx_runner)
from dino_mm.apis.export import other_size
from dino_mm.apis.cli import parse_overrides


def _hw(text: str) -> Tuple[int, int]:
    try:
        h, w = (int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size {text!r} must look like H,W') from None
    return h, w


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', default=None,
                        help='official backbone name (default: the architecture recorded in '
                        '--weights, else dinov2_vits14)')
    parser.add_argument('--weights', default=None,
                        help='local official checkpoint, or a file exported by '
                        'tools/convert/pretrain_to_backbone.py (random init with a warning '
                        'if absent)')
    parser.add_argument('--override', nargs='*', default=None, metavar='KEY=VALUE')
    parser.add_argument('--out', required=True,
                        help='output path without extension (.pt / .onnx are added)')
    parser.add_argument('--format', nargs='+', choices=['torchscript', 'onnx'],
                        default=['torchscript', 'onnx'])
    parser.add_argument('--method', choices=['trace', 'script'], default='trace',
                        help='TorchScript method')
    parser.add_argument('--example-size', nargs=2, type=int, default=[224, 224],
                        metavar=('H', 'W'))
    parser.add_argument('--check-sizes', nargs='*', type=_hw, default=None,
                        metavar='H,W', help='sizes compared with eager (default: the '
                        'example size and one 4 patches larger per side)')
    parser.add_argument('--atol', type=float, default=1e-4,
                        help='largest accepted |eager - exported| (default 1e-4); a larger '
                        'difference makes the tool exit with status 1')
    parser.add_argument('--static', action='store_true',
                        help='ONNX with fixed input size (default: dynamic batch/H/W)')
    parser.add_argument('--opset', type=int, default=None)
    return parser.parse_args(argv)


def _failures(diffs: Dict[Tuple[int, int], float], atol: float) -> Dict[str, float]:
    return {str(k): v for k, v in diffs.items() if not v <= atol}  # inf / nan fail too


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Export and check; the report's ``ok`` is False when a check failed."""
    args = parse_args(argv)
    model = build_backbone(args.arch, args.weights, **parse_overrides(args.override))
    example = tuple(args.example_size)
    sizes = args.check_sizes or [example, other_size(model, example)]
    report: Dict[str, Any] = {}
    failed: Dict[str, Dict[str, float]] = {}
    if 'torchscript' in args.format:
        path = f'{args.out}.pt'
        module = export_torchscript(model, path, example, args.method)
        diffs = max_abs_diff(model, module, sizes)
        report['torchscript'] = dict(path=path, max_abs_diff={str(k): v for k, v in diffs.items()})
        if _failures(diffs, args.atol):
            failed['torchscript'] = _failures(diffs, args.atol)
    if 'onnx' in args.format:
        info = export_onnx(model, f'{args.out}.onnx', example, dynamic=not args.static,
                           opset=args.opset, check_sizes=sizes, atol=args.atol)
        runner = onnx_runner(info['path'])
        if runner is None:
            info['max_abs_diff'] = 'onnxruntime not installed: graph checked with onnx.checker only'
        else:
            # Every requested size: a static graph that cannot run one of them fails.
            diffs = max_abs_diff(model, runner, sizes)
            info['max_abs_diff'] = {str(k): v for k, v in diffs.items()}
            if _failures(diffs, args.atol):
                failed['onnx'] = _failures(diffs, args.atol)
        report['onnx'] = info
    report['ok'] = not failed
    print(json.dumps(report, indent=1))
    for fmt, bad in failed.items():
        hint = ''
        if fmt == 'onnx' and not report['onnx'].get('dynamic'):
            hint = (' The ONNX graph is static (input '
                    f"{report['onnx'].get('input_shape')}): it only runs at the example size"
                    + (f" ({report['onnx']['dynamic_error']})"
                       if 'dynamic_error' in report['onnx'] else '') + '.')
        print(f'error: the exported {fmt} model ({report[fmt]["path"]}) differs from the '
              f'eager {args.arch or "backbone"} by more than --atol={args.atol} (inf: it cannot run that '
              f'size) at {bad}.{hint}', file=sys.stderr)
    return report


if __name__ == '__main__':
    sys.exit(0 if main(sys.argv[1:])['ok'] else 1)
