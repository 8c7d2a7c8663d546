"""Prepare face SR data: FFHQ (training) and CelebA-HQ (testing) for x8 and x16 (paper §4.1).

Each image is centre-cropped to a square (FFHQ and CelebA-HQ already are), resized to ``--hr-size`` with
MATLAB bicubic (basicsr's ``imresize``, anti-aliased) when its size differs, and degraded for each scale with the
same blur (sigma 1.3) + bicubic as the other sets. Images smaller than ``--hr-size`` are dropped, not upscaled.

``--hr-size`` defaults to 512 (LR 64x64 for x8, 32x32 for x16): our choice; the HR size is an option because
face SR papers differ (128x128 HR gives the classic 16x16 LR at x8). It must be a multiple of every scale.

Output (PNG, identical names in every folder)::

    OUT/HR/<name>.png   OUT/LRx8/<name>.png   OUT/LRx16/<name>.png
    OUT/prepare_info.json               options used (a rerun with other options is refused)
    OUT/prompts_image_x8.lmdb, ..._x16  --prompts: CLIP image prompts of each LR set's flipped view

Run it once per data set, e.g.::

    python scripts/data_preparation/prepare_faces.py ffhq/images1024x1024 datasets/ffhq_512 --prompts
    python scripts/data_preparation/prepare_faces.py celeba_hq/images datasets/celebahq_512 --prompts
"""

import argparse
import os
import sys

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:  # run as a file: make `pdnsr` and `scripts` importable
    sys.path.insert(0, REPO_ROOT)

# isort: off
import pdnsr  # noqa: E402,F401  (applies the basicsr compat shim before basicsr is imported)
from basicsr.utils.matlab_functions import imresize  # noqa: E402
# isort: on

from pdnsr.cli import add_view_argument, run_main  # noqa: E402
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
    positive_int,
    prepare_output,
    read_image,
    run_parallel,
)

PROG = 'prepare_faces.py'


def to_hr(img, hr_size):
    """Centre-crop to a square and resize to ``hr_size`` with MATLAB bicubic. img: (H, W, 3) uint8."""
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    img = img[top : top + side, left : left + side]
    if side == hr_size:
        return img
    out = imresize(img.astype(np.float32) / 255.0, hr_size / side)
    # imresize sizes its output ceil(side * factor), which can exceed hr_size by one for non-integer ratios.
    out = out[:hr_size, :hr_size]
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def process_image(task):
    """Make HR and LR files for one face. task: (path, out_dir, hr_size, scales, sigma). Returns (key, status)."""
    path, out_dir, hr_size, scales, sigma = task
    key = image_key(path)
    hr_path = os.path.join(out_dir, 'HR', f'{key}.png')
    lr_paths = [os.path.join(out_dir, f'LRx{s}', f'{key}.png') for s in scales]
    if all_exist(lr_paths + [hr_path]):
        return key, 'complete'
    img, _ = read_image(path)
    if min(img.shape[:2]) < hr_size:
        return key, 'small'
    hr = to_hr(img, hr_size)
    for scale, lr_path in zip(scales, lr_paths):
        write_image(lr_path, blur_downsample(hr, scale, sigma))
    write_image(hr_path, hr)
    return key, 'written'


def build_parser():
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog=PROG, description='Face images → square HR + blurred bicubic LR (x8/x16) + image prompts.'
    )
    parser.add_argument('input', help='folder of face images (FFHQ images1024x1024, CelebA-HQ, ...)')
    parser.add_argument('output', help='output folder')
    parser.add_argument('--hr-size', type=positive_int, default=512, help='HR side in pixels. Default: 512')
    parser.add_argument('--scales', type=positive_int, nargs='+', default=[8, 16], help='Default: 8 16')
    add_common_args(parser)
    group = add_prompt_args(parser)
    group.add_argument('--prompts', action='store_true', help='build an image prompt LMDB per scale from LRx{s}/')
    add_view_argument(group)
    return parser


def run(argv):
    """Script body; see the module docstring."""
    args = build_parser().parse_args(argv)
    scales = sorted(set(args.scales))
    bad = [s for s in scales if args.hr_size % s]
    if bad:
        raise UserError(f'--hr-size {args.hr_size} is not a multiple of scale(s) {bad}')
    paths = list_images(args.input)
    if args.prompts:
        check_prompt_args(args)
    info = {'script': PROG, 'hr_size': args.hr_size, 'scales': scales, 'sigma': args.sigma}
    subdirs = ['HR'] + [f'LRx{s}' for s in scales]
    prepare_output(args.output, subdirs, info, args.overwrite)
    tasks = [(p, args.output, args.hr_size, scales, args.sigma) for p in paths]
    results = run_parallel(process_image, tasks, args.workers, desc=f'HR{args.hr_size}+LR')

    status = [r[1] for r in results]
    print(
        f'{len(paths)} images: {status.count("written")} written, {status.count("complete")} already complete, '
        f'{status.count("small")} dropped (smaller than {args.hr_size}) in {", ".join(subdirs)}'
    )
    if args.prompts:
        keys = sorted(r[0] for r in results if r[1] != 'small')
        for scale in scales:
            out = os.path.join(args.output, f'prompts_image_x{scale}.lmdb')
            lr_dir = os.path.join(args.output, f'LRx{scale}')
            n = build_prompts(args, 'image', out, keys, images_dir=lr_dir, view=args.view)
            print(f'image prompt store {out}: ' + ('up to date, kept' if n is None else f'{n} keys'))
    return 0


def main(argv=None):
    """Entry point; returns the exit code (0 ok, 2 user error)."""
    return run_main(lambda: run(argv), PROG)


if __name__ == '__main__':
    sys.exit(main())
