"""``pdnsr-prepare faces``: face SR data, FFHQ (training) and CelebA-HQ (testing) for x8 and x16 (paper §4.1).

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

    pdnsr-prepare faces ffhq/images1024x1024 datasets/ffhq_512 --prompts --clip-pretrained /path/to/open_clip_model.bin
    pdnsr-prepare faces celeba_hq/images datasets/celebahq_512 --prompts --clip-pretrained /path/to/open_clip_model.bin
"""

import os

import numpy as np
from basicsr.utils.matlab_functions import imresize

from pdnsr.data.degradations import blur_downsample
from pdnsr.data.image_files import image_key, write_image
from pdnsr.errors import UserError
from pdnsr.tools.cli import add_view_argument, check_apart, check_output_folder
from pdnsr.tools.prepare import common

NAME = 'faces'
SCRIPT = 'prepare_faces.py'
DESCRIPTION = 'Face images → square HR + blurred bicubic LR (x8/x16) + image prompts.'


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
    """Make HR and LR files for one face. task: (path, out_dir, hr_size, scales, sigma, overwrite).

    Returns:
        tuple | common.Skipped: (key, status), status 'written', 'complete' or 'small'.
    """
    path, out_dir, hr_size, scales, sigma, overwrite = task
    key = image_key(path)
    hr_path = os.path.join(out_dir, 'HR', f'{key}.png')
    lr_paths = [os.path.join(out_dir, f'LRx{s}', f'{key}.png') for s in scales]
    if common.all_exist(lr_paths + [hr_path], overwrite):
        return key, 'complete'
    read = common.read_input(path)
    if isinstance(read, common.Skipped):
        return read
    img, _ = read
    if min(img.shape[:2]) < hr_size:
        return key, 'small'
    hr = to_hr(img, hr_size)
    for scale, lr_path in zip(scales, lr_paths):
        write_image(lr_path, blur_downsample(hr, scale, sigma))
    write_image(hr_path, hr)
    return key, 'written'


def add_arguments(parser):
    """The command's options on ``parser`` (an ``argparse.ArgumentParser``)."""
    parser.add_argument('input', help='folder of face images (FFHQ images1024x1024, CelebA-HQ, ...)')
    parser.add_argument('output', help='output folder')
    parser.add_argument('--hr-size', type=common.positive_int, default=512, help='HR side in pixels. Default: 512')
    parser.add_argument('--scales', type=common.positive_int, nargs='+', default=[8, 16], help='Default: 8 16')
    common.add_common_args(parser)
    group = common.add_prompt_args(parser)
    group.add_argument('--prompts', action='store_true', help='build an image prompt LMDB per scale from LRx{s}/')
    add_view_argument(group)


def run(args):
    """The command's body; see the module docstring. Returns the exit status."""
    scales = sorted(set(args.scales))
    bad = [s for s in scales if args.hr_size % s]
    if bad:
        raise UserError(f'--hr-size {args.hr_size} is not a multiple of scale(s) {bad}')
    paths = common.list_images(args.input)
    check_output_folder(args.output)
    check_apart(args.output, 'output', reads={'input': args.input})
    stores = {s: os.path.join(args.output, f'prompts_image_x{s}.lmdb') for s in scales} if args.prompts else {}
    needed = [common.prompt_store_needs_encoder(args, 'image', out, args.view) for out in stores.values()]
    encoder = common.load_encoder(args) if any(needed) else None

    info = {'script': SCRIPT, 'hr_size': args.hr_size, 'scales': scales, 'sigma': args.sigma}
    subdirs = ['HR'] + [f'LRx{s}' for s in scales]
    common.prepare_output(args.output, subdirs, info, args.overwrite)
    tasks = [(p, args.output, args.hr_size, scales, args.sigma, args.overwrite) for p in paths]
    folders = [os.path.join(args.output, sub) for sub in subdirs]
    results, skipped = common.process_images(process_image, tasks, args, f'HR{args.hr_size}+LR', folders)

    produced = [r[0] for r in results if r[1] != 'small']
    common.finish_output(args.output, [f'{sub}/{key}.png' for key in produced for sub in subdirs], args.overwrite)
    status = [r[1] for r in results]
    print(
        f'{len(paths)} images: {status.count("written")} written, {status.count("complete")} already complete, '
        f'{status.count("small")} dropped (smaller than {args.hr_size}){common.skipped_summary(skipped)} in '
        f'{", ".join(subdirs)}'
    )
    keys = sorted(r[0] for r in results if r[1] != 'small')
    for scale, out in stores.items():
        lr_dir = os.path.join(args.output, f'LRx{scale}')
        n = common.build_prompts(args, 'image', out, keys, encoder, images_dir=lr_dir, view=args.view)
        print(f'image prompt store {out}: ' + ('up to date, kept' if n is None else f'{n} keys'))
    return 0
