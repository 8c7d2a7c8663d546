"""Prepare the PDN training set from MS-COCO (paper §4.1).

Steps, for each image of the COCO image folder:

1. drop it if its longest edge is below ``--min-size`` (512) or it cannot hold one crop;
2. cut ``--crop-size`` (320) square sub-images the way basicsr's ``extract_subimages.py`` does: top-left corners
   every ``--step`` pixels, plus a last crop flush with the bottom/right edge when more than ``--thresh-size``
   pixels would otherwise be lost; keys ``<name>_s001``, ``<name>_s002``, ... row by row;
3. make the LR of every crop for each scale (2, 4, 8) by Gaussian blur (sigma 1.3) + MATLAB bicubic.

Output (PNG, identical names in every folder)::

    OUT/GT/<name>_s001.png   OUT/LRx2/...   OUT/LRx4/...   OUT/LRx8/...
    OUT/prepare_info.json                  options used (a rerun with other options is refused)
    OUT/prompts_text.lmdb                  --prompts: CLIP text embeddings of the captions, keyed by parent image
    OUT/GT.lmdb, OUT/LRx2.lmdb, ...        --lmdb: basicsr image LMDBs (same keys)

The prompt store is keyed by the parent image name (``000000000009``), not by the crop: the dataset maps a crop
key ``<name>_sNNN`` to its parent's prompt, so one caption set serves all crops of an image.

Example::

    python scripts/data_preparation/prepare_coco.py --images coco/train2017 \
        --captions coco/annotations/captions_train2017.json --output datasets/coco_train --prompts --lmdb
"""

import argparse
import os
import sys

import cv2

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:  # run as a file: make `pdnsr` and `scripts` importable
    sys.path.insert(0, REPO_ROOT)

# isort: off
import pdnsr  # noqa: E402,F401  (applies the basicsr compat shim before basicsr is imported)
# isort: on

from pdnsr.cli import run_main  # noqa: E402
from pdnsr.data.degradations import blur_downsample  # noqa: E402
from pdnsr.data.image_files import image_key, write_image  # noqa: E402
from pdnsr.errors import UserError  # noqa: E402
from scripts.data_preparation.common import (  # noqa: E402
    add_common_args,
    add_prompt_args,
    all_exist,
    build_prompts,
    check_prompt_args,
    list_images,
    make_image_lmdb,
    positive_int,
    prepare_output,
    read_image,
    run_parallel,
)

PROG = 'prepare_coco.py'


def crop_starts(length, crop_size, step, thresh_size):
    """Top-left offsets along one axis, basicsr's ``extract_subimages`` rule (empty if ``length < crop_size``)."""
    if length < crop_size:
        return []
    starts = list(range(0, length - crop_size + 1, step))
    if length - (starts[-1] + crop_size) > thresh_size:
        starts.append(length - crop_size)
    return starts


def process_image(task):
    """Crop one image and degrade its crops. Returns (key, status, n_crops, n_written); status kept/small."""
    path, out_dir, opt = task
    key = image_key(path)
    img, _ = read_image(path)
    h, w = img.shape[:2]
    if max(h, w) < opt['min_size']:
        return key, 'small', 0, 0
    ys = crop_starts(h, opt['crop_size'], opt['step'], opt['thresh_size'])
    xs = crop_starts(w, opt['crop_size'], opt['step'], opt['thresh_size'])
    if not ys or not xs:
        return key, 'narrow', 0, 0
    size, written, index = opt['crop_size'], 0, 0
    for y in ys:
        for x in xs:
            index += 1
            name = f'{key}_s{index:03d}.png'
            gt_path = os.path.join(out_dir, 'GT', name)
            lr_paths = [os.path.join(out_dir, f'LRx{s}', name) for s in opt['scales']]
            if all_exist(lr_paths + [gt_path]):
                continue
            crop = img[y : y + size, x : x + size]
            for scale, lr_path in zip(opt['scales'], lr_paths):
                write_image(lr_path, blur_downsample(crop, scale, opt['sigma']))
            write_image(gt_path, crop, opt['png_params'])
            written += 1
    return key, 'kept', index, written


def build_parser():
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog=PROG, description='COCO → 320x320 GT sub-images + blurred bicubic LR (x2/x4/x8) + caption prompts.'
    )
    parser.add_argument('--images', required=True, help='COCO image folder, e.g. coco/train2017')
    parser.add_argument('--captions', help='COCO captions file, e.g. annotations/captions_train2017.json')
    parser.add_argument('--output', required=True, help='output folder')
    parser.add_argument('--scales', type=positive_int, nargs='+', default=[2, 4, 8], help='Default: 2 4 8')
    parser.add_argument(
        '--min-size', type=positive_int, default=512, help='drop images whose longest edge is smaller. Default: 512'
    )
    parser.add_argument('--crop-size', type=positive_int, default=320, help='sub-image size. Default: 320')
    parser.add_argument('--step', type=positive_int, default=None, help='crop stride. Default: crop size')
    parser.add_argument(
        '--thresh-size',
        type=int,
        default=0,
        help='add an edge-flush crop when more than this many pixels remain. Default: 0 (always, like basicsr)',
    )
    parser.add_argument(
        '--compress-level',
        type=int,
        default=3,
        choices=range(10),
        metavar='0-9',
        help='PNG compression of the GT crops (basicsr uses 3). Default: 3',
    )
    add_common_args(parser)
    parser.add_argument('--lmdb', action='store_true', help='also pack GT/ and LRx*/ into basicsr image LMDBs')
    group = add_prompt_args(parser)
    group.add_argument('--prompts', action='store_true', help='build OUT/prompts_text.lmdb from --captions')
    return parser


def run(argv):
    """Script body; see the module docstring."""
    args = build_parser().parse_args(argv)
    args.step = args.step or args.crop_size
    scales = sorted(set(args.scales))
    bad = [s for s in scales if args.crop_size % s]
    if bad:
        raise UserError(f'--crop-size {args.crop_size} is not a multiple of scale(s) {bad}')
    if args.prompts and not args.captions:
        raise UserError('--prompts needs --captions FILE (the COCO captions_*.json)')
    if args.captions and not os.path.isfile(args.captions):
        raise UserError(f'captions file not found: {args.captions}')
    paths = list_images(args.images)
    if args.prompts:
        check_prompt_args(args)

    opt = {
        'crop_size': args.crop_size,
        'step': args.step,
        'thresh_size': args.thresh_size,
        'min_size': args.min_size,
        'scales': scales,
        'sigma': args.sigma,
    }
    subdirs = ['GT'] + [f'LRx{s}' for s in scales]
    prepare_output(args.output, subdirs, dict(opt, script=PROG), args.overwrite)
    opt['png_params'] = [cv2.IMWRITE_PNG_COMPRESSION, args.compress_level]
    results = run_parallel(process_image, [(p, args.output, opt) for p in paths], args.workers, desc='crop+LR')

    kept = [r[0] for r in results if r[1] == 'kept']
    small = sum(r[1] == 'small' for r in results)
    narrow = sum(r[1] == 'narrow' for r in results)
    crops = sum(r[2] for r in results)
    written = sum(r[3] for r in results)
    print(
        f'{len(paths)} images: {len(kept)} kept, {small} dropped (longest edge < {args.min_size}), '
        f'{narrow} dropped (an edge < {args.crop_size}); {crops} sub-images ({written} written, '
        f'{crops - written} already complete) in {", ".join(subdirs)}'
    )

    if args.lmdb:
        for sub in subdirs:
            lmdb_path = os.path.join(args.output, f'{sub}.lmdb')
            built = make_image_lmdb(os.path.join(args.output, sub), lmdb_path, args.overwrite, args.workers)
            print(f'{lmdb_path}: {"built" if built else "up to date, kept"}')

    if args.prompts:
        from pdnsr.prompts.build import load_captions

        try:
            captions = load_captions(args.captions)
        except (ValueError, KeyError) as err:
            raise UserError(f'reading {args.captions}: {err}') from None
        missing = [k for k in kept if not captions.get(k)]
        if missing:
            raise UserError(
                f'{len(missing)} kept image(s) have no caption in {args.captions} (wrong split?): '
                f'{", ".join(missing[:5])}'
            )
        out = os.path.join(args.output, 'prompts_text.lmdb')
        n = build_prompts(args, 'text', out, kept, captions={k: captions[k] for k in kept})
        state = 'up to date, kept' if n is None else f'{n} keys'
        print(f'text prompt store {out} (keyed by parent image name): {state}')
    return 0


def main(argv=None):
    """Entry point; returns the exit code (0 ok, 2 user error)."""
    return run_main(lambda: run(argv), PROG)


if __name__ == '__main__':
    sys.exit(main())
