"""Generate the ``extra/*.npy`` metadata of an ImageNet-1k folder (official layout).

Usage::

    python tools/dataset_converters/make_imagenet_extra.py --root data/imagenet \
        --extra data/imagenet/extra [--splits TRAIN VAL TEST]

The root must hold ``labels.txt`` ("wnid,class name" per line) and the split folders
``train/<wnid>/<wnid>_<idx>.JPEG``, ``val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG``,
``test/ILSVRC2012_test_<8 digits>.JPEG``. The files are compatible with the official
DINOv2 / DINOv3 ``ImageNet`` dataset and with ``dino_mm.ImageNet``.
"""
import argparse
import sys

from dino_mm.datasets.imagenet import dump_imagenet_extra


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--root', required=True, help='ImageNet root folder')
    parser.add_argument('--extra', required=True, help='output folder for the .npy files')
    parser.add_argument('--splits', nargs='+', default=['TRAIN', 'VAL', 'TEST'],
                        help='splits to index (missing split folders are skipped)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        written = dump_imagenet_extra(args.root, args.extra, args.splits)
    except (FileNotFoundError, KeyError, ValueError) as err:  # messages name the files
        print(f'error: {err.args[0] if err.args else err}', file=sys.stderr)
        return 1
    if not written:
        print(f'No split folder found under {args.root}; nothing written.', file=sys.stderr)
        return 1
    print(f'Wrote extra files for {", ".join(written)} to {args.extra}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
