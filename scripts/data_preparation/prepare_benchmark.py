"""Prepare an SR test set (Set5, Set14, Urban100, ...) from a folder of HR images.

For one scale s, every image is read as 3-channel uint8 (greyscale images such as Set14's bridge are
replicated to 3 channels), mod-cropped to a multiple of s with basicsr's ``mod_crop``, and degraded with the
paper's blur (sigma 1.3 by default, as in training; ``--sigma 0`` gives the classic plain-bicubic benchmark)
followed by MATLAB bicubic. Output, all PNG, same names in both folders::

    OUT/HR/<name>.png          mod-cropped HR
    OUT/LRx{s}/<name>.png      LR
    OUT/prepare_info.json      options used (a rerun with other options is refused)
    OUT/prompts_image_x{s}.lmdb   --prompts image: CLIP image prompts of the LR images' flipped view
    OUT/prompts_text.lmdb         --captions FILE: CLIP text prompts
    OUT/prompts_mixed_x{s}.lmdb   both: mixed prompts

Example (from the repository root)::

    python scripts/data_preparation/prepare_benchmark.py ../shared/data/benchmarks/Set5 datasets/Set5_x4 \
        --scale 4 --prompts image --captions ../shared/data/benchmarks/captions.json --captions-subset Set5
"""

import argparse
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:  # run as a file: make `pdnsr` and `scripts` importable
    sys.path.insert(0, REPO_ROOT)

# isort: off
import pdnsr  # noqa: E402,F401  (applies the basicsr compat shim before basicsr is imported)
from basicsr.data.transforms import mod_crop  # noqa: E402
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

PROG = 'prepare_benchmark.py'


def process_image(task):
    """Mod-crop and degrade one image. task: (path, out_dir, scale, sigma). Returns (key, written, grey, cropped)."""
    path, out_dir, scale, sigma = task
    key = image_key(path)
    hr_path = os.path.join(out_dir, 'HR', f'{key}.png')
    lr_path = os.path.join(out_dir, f'LRx{scale}', f'{key}.png')
    if all_exist([hr_path, lr_path]):
        return key, False, False, False
    img, grey = read_image(path)
    hr = mod_crop(img, scale)
    if min(hr.shape[:2]) == 0:
        raise UserError(f'{path} is smaller than the scale {scale}')
    lr = blur_downsample(hr, scale, sigma)
    # LR first, HR last: HR is the last file an item writes, whatever order a reader checks.
    write_image(lr_path, lr)
    write_image(hr_path, hr)
    return key, True, grey, hr.shape[:2] != img.shape[:2]


def build_parser():
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Mod-crop HR test images, make LR by Gaussian blur + MATLAB bicubic, optionally build prompts.',
    )
    parser.add_argument('input', help='folder of HR images (png, jpg, bmp, tif...)')
    parser.add_argument('output', help='output folder (HR/, LRx{s}/, prompt LMDBs)')
    parser.add_argument('--scale', type=positive_int, default=4, help='SR scale. Default: 4')
    add_common_args(parser)
    group = add_prompt_args(parser)
    group.add_argument(
        '--prompts',
        choices=['image', 'text', 'mixed'],
        help='build a prompt LMDB: image = CLIP of the LR images (flipped view); text needs --captions; '
        'image together with --captions gives mixed. Default: text if --captions is given, else none',
    )
    group.add_argument('--captions', help='captions JSON ({key: [..]}, {subset: {key: [..]}} or COCO format)')
    group.add_argument('--captions-subset', help='top-level key of the captions file to use, e.g. Set5')
    add_view_argument(group)
    group.add_argument(
        '--prompt-images',
        choices=['lr', 'hr'],
        default='lr',
        help="images encoded for image prompts: lr (deployable) or hr (the paper's oracle setting). Default: lr",
    )
    return parser


def prompt_kind(args):
    """Which store to build from --prompts/--captions (None: no prompts)."""
    kind = args.prompts
    if kind is None:
        return 'text' if args.captions else None
    if kind == 'image' and args.captions:
        return 'mixed'
    if kind in ('text', 'mixed') and not args.captions:
        raise UserError(f'--prompts {kind} needs --captions FILE')
    return kind


def load_benchmark_captions(args, keys):
    """Captions for exactly ``keys``; an image without a caption is an error (it would fail at test time)."""
    from pdnsr.prompts.build import load_captions

    if not os.path.isfile(args.captions):
        raise UserError(f'captions file not found: {args.captions}')
    try:
        captions = load_captions(args.captions, subset=args.captions_subset)
    except (ValueError, KeyError) as err:
        raise UserError(f'reading {args.captions}: {err}') from None
    missing = [k for k in keys if not captions.get(k)]
    if missing:
        raise UserError(
            f'{len(missing)} image(s) have no caption in {args.captions}'
            f'{" [" + args.captions_subset + "]" if args.captions_subset else ""}: {", ".join(missing[:5])}'
        )
    return {k: captions[k] for k in keys}


def run(argv):
    """Script body; see the module docstring."""
    args = build_parser().parse_args(argv)
    kind = prompt_kind(args)
    if kind is not None:
        check_prompt_args(args)
    paths = list_images(args.input)
    keys = [image_key(p) for p in paths]
    captions = load_benchmark_captions(args, keys) if kind in ('text', 'mixed') else None

    lr_dir = f'LRx{args.scale}'
    info = {'script': PROG, 'scale': args.scale, 'sigma': args.sigma, 'bicubic': 'basicsr matlab imresize'}
    prepare_output(args.output, ['HR', lr_dir], info, args.overwrite)
    tasks = [(p, args.output, args.scale, args.sigma) for p in paths]
    results = run_parallel(process_image, tasks, args.workers, desc=f'HR/LRx{args.scale}')

    written = sum(r[1] for r in results)
    grey = [r[0] for r in results if r[2]]
    cropped = sum(r[3] for r in results)
    print(
        f'{len(results)} images in {args.output}: {written} written, {len(results) - written} already complete; '
        f'{cropped} of those written mod-cropped to a multiple of {args.scale}'
    )
    if grey:
        print(f'greyscale converted to 3 channels: {", ".join(grey)}')

    if kind is not None:
        images_dir = os.path.join(args.output, lr_dir if args.prompt_images == 'lr' else 'HR')
        name = 'prompts_text.lmdb' if kind == 'text' else f'prompts_{kind}_x{args.scale}.lmdb'
        if args.prompt_images == 'hr' and kind != 'text':
            name = name.replace('.lmdb', '_hr.lmdb')
        out = os.path.join(args.output, name)
        n = build_prompts(
            args,
            kind,
            out,
            keys,
            captions=captions,
            images_dir=images_dir if kind != 'text' else None,
            view=args.view,
        )
        print(f'{kind} prompt store {out}: ' + ('up to date, kept' if n is None else f'{n} keys'))
    return 0


def main(argv=None):
    """Entry point; returns the exit code (0 ok, 2 user error)."""
    return run_main(lambda: run(argv), PROG)


if __name__ == '__main__':
    sys.exit(main())
