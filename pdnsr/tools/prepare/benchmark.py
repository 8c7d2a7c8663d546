"""``pdnsr-prepare benchmark``: an SR test set (Set5, Set14, Urban100, ...) from a folder of HR images.

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

    pdnsr-prepare benchmark ../shared/data/benchmarks/Set5 datasets/Set5_x4 --scale 4 --prompts image \
        --captions ../shared/data/benchmarks/captions.json --captions-subset Set5 \
        --clip-pretrained /path/to/open_clip_model.bin
"""

import os

from basicsr.data.transforms import mod_crop

from pdnsr.data.degradations import blur_downsample
from pdnsr.data.image_files import image_key, write_image
from pdnsr.errors import UserError
from pdnsr.prompts.build import load_captions
from pdnsr.tools.cli import add_view_argument, check_apart, check_output_folder
from pdnsr.tools.prepare import common

NAME = 'benchmark'
SCRIPT = 'prepare_benchmark.py'
DESCRIPTION = 'Mod-crop HR test images, make LR by Gaussian blur + MATLAB bicubic, optionally build prompts.'


def process_image(task):
    """Mod-crop and degrade one image. task: (path, out_dir, scale, sigma, overwrite).

    Returns:
        tuple | common.Skipped: (key, written, grey, cropped).
    """
    path, out_dir, scale, sigma, overwrite = task
    key = image_key(path)
    hr_path = os.path.join(out_dir, 'HR', f'{key}.png')
    lr_path = os.path.join(out_dir, f'LRx{scale}', f'{key}.png')
    if common.all_exist([hr_path, lr_path], overwrite):
        return key, False, False, False
    read = common.read_input(path)
    if isinstance(read, common.Skipped):
        return read
    img, grey = read
    hr = mod_crop(img, scale)
    if min(hr.shape[:2]) == 0:
        raise UserError(f'{path} is smaller than the scale {scale}')
    lr = blur_downsample(hr, scale, sigma)
    # LR first, HR last: HR is the last file an item writes, whatever order a reader checks.
    write_image(lr_path, lr)
    write_image(hr_path, hr)
    return key, True, grey, hr.shape[:2] != img.shape[:2]


def add_arguments(parser):
    """The command's options on ``parser`` (an ``argparse.ArgumentParser``)."""
    parser.add_argument('input', help='folder of HR images (png, jpg, bmp, tif...)')
    parser.add_argument('output', help='output folder (HR/, LRx{s}/, prompt LMDBs)')
    parser.add_argument('--scale', type=common.positive_int, default=4, help='SR scale. Default: 4')
    common.add_common_args(parser)
    group = common.add_prompt_args(parser)
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
    if not os.path.isfile(args.captions):
        raise UserError(f'captions file not found: {args.captions}')
    captions = load_captions(args.captions, subset=args.captions_subset)
    missing = [k for k in keys if not captions.get(k)]
    if missing:
        raise UserError(
            f'{len(missing)} image(s) have no caption in {args.captions}'
            f'{" [" + args.captions_subset + "]" if args.captions_subset else ""}: {", ".join(missing[:5])}'
        )
    return {k: captions[k] for k in keys}


def store_name(kind, args):
    """The prompt store's file name for ``kind`` and the options."""
    name = 'prompts_text.lmdb' if kind == 'text' else f'prompts_{kind}_x{args.scale}.lmdb'
    if args.prompt_images == 'hr' and kind != 'text':
        name = name.replace('.lmdb', '_hr.lmdb')
    return name


def run(args):
    """The command's body; see the module docstring. Returns the exit status."""
    kind = prompt_kind(args)
    paths = common.list_images(args.input)
    captions = load_benchmark_captions(args, [image_key(p) for p in paths]) if kind in ('text', 'mixed') else None
    check_output_folder(args.output)
    check_apart(args.output, 'output', reads={'input': args.input}, refers={'--captions': args.captions})
    store = os.path.join(args.output, store_name(kind, args)) if kind else None
    encoder = None
    if kind and common.prompt_store_needs_encoder(args, kind, store, args.view):
        encoder = common.load_encoder(args)

    lr_dir = f'LRx{args.scale}'
    info = {'script': SCRIPT, 'scale': args.scale, 'sigma': args.sigma, 'bicubic': 'basicsr matlab imresize'}
    common.prepare_output(args.output, ['HR', lr_dir], info, args.overwrite)
    tasks = [(p, args.output, args.scale, args.sigma, args.overwrite) for p in paths]
    folders = [os.path.join(args.output, sub) for sub in ('HR', lr_dir)]
    results, skipped = common.process_images(process_image, tasks, args, f'HR/LRx{args.scale}', folders)
    common.finish_output(args.output, [f'{sub}/{r[0]}.png' for r in results for sub in ('HR', lr_dir)], args.overwrite)

    written = sum(r[1] for r in results)
    grey = [r[0] for r in results if r[2]]
    cropped = sum(r[3] for r in results)
    print(
        f'{len(paths)} images in {args.output}: {written} written, {len(results) - written} already complete'
        f'{common.skipped_summary(skipped)}; {cropped} of those written mod-cropped to a multiple of {args.scale}'
    )
    if grey:
        print(f'greyscale converted to 3 channels: {", ".join(grey)}')

    if kind is not None:
        keys = [r[0] for r in results]
        images_dir = os.path.join(args.output, lr_dir if args.prompt_images == 'lr' else 'HR')
        n = common.build_prompts(
            args,
            kind,
            store,
            keys,
            encoder,
            captions={k: captions[k] for k in keys} if captions else None,
            images_dir=images_dir if kind != 'text' else None,
            view=args.view,
        )
        print(f'{kind} prompt store {store}: ' + ('up to date, kept' if n is None else f'{n} keys'))
    return 0
