"""``pdnsr-prepare coco``: the PDN training set from MS-COCO (paper §4.1).

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
key ``<name>_sNNN`` to its parent's prompt, so one caption set serves all crops of an image. With ``--prompts``
the captions file is read and checked (every image that will be kept has a caption) and CLIP is loaded before the
first crop.

Example::

    pdnsr-prepare coco --images coco/train2017 --captions coco/annotations/captions_train2017.json \
        --output datasets/coco_train --prompts --lmdb --clip-pretrained /path/to/open_clip_model.bin
"""

import os

import cv2

from pdnsr.data.degradations import blur_downsample
from pdnsr.data.image_files import image_key, image_size, write_image
from pdnsr.errors import UserError
from pdnsr.prompts.build import load_captions
from pdnsr.tools.cli import check_apart, check_output_folder
from pdnsr.tools.prepare import common

NAME = 'coco'
SCRIPT = 'prepare_coco.py'
DESCRIPTION = 'COCO → 320x320 GT sub-images + blurred bicubic LR (x2/x4/x8) + caption prompts.'


def crop_starts(length, crop_size, step, thresh_size):
    """Top-left offsets along one axis, basicsr's ``extract_subimages`` rule (empty if ``length < crop_size``)."""
    if length < crop_size:
        return []
    starts = list(range(0, length - crop_size + 1, step))
    if length - (starts[-1] + crop_size) > thresh_size:
        starts.append(length - crop_size)
    return starts


def drop_reason(height, width, opt):
    """Why an image of this size is dropped: 'small' (longest edge < min size), 'narrow' (an edge < crop size), or
    None when it is kept."""
    if max(height, width) < opt['min_size']:
        return 'small'
    if min(height, width) < opt['crop_size']:
        return 'narrow'
    return None


def process_image(task):
    """Crop one image and degrade its crops. task: (path, out_dir, opt).

    Returns:
        tuple | common.Skipped: (key, status, n_crops, n_written), status 'kept', 'small' or 'narrow'.
    """
    path, out_dir, opt = task
    key = image_key(path)
    read = common.read_input(path)
    if isinstance(read, common.Skipped):
        return read
    img, _ = read
    h, w = img.shape[:2]
    dropped = drop_reason(h, w, opt)
    if dropped:
        return key, dropped, 0, 0
    ys = crop_starts(h, opt['crop_size'], opt['step'], opt['thresh_size'])
    xs = crop_starts(w, opt['crop_size'], opt['step'], opt['thresh_size'])
    size, written, index = opt['crop_size'], 0, 0
    for y in ys:
        for x in xs:
            index += 1
            name = f'{key}_s{index:03d}.png'
            gt_path = os.path.join(out_dir, 'GT', name)
            lr_paths = [os.path.join(out_dir, f'LRx{s}', name) for s in opt['scales']]
            if common.all_exist(lr_paths + [gt_path], opt['overwrite']):
                continue
            crop = img[y : y + size, x : x + size]
            for scale, lr_path in zip(opt['scales'], lr_paths):
                write_image(lr_path, blur_downsample(crop, scale, opt['sigma']))
            write_image(gt_path, crop, opt['png_params'])
            written += 1
    return key, 'kept', index, written


def add_arguments(parser):
    """The command's options on ``parser`` (an ``argparse.ArgumentParser``)."""
    parser.add_argument('--images', required=True, help='COCO image folder, e.g. coco/train2017')
    parser.add_argument('--captions', help='COCO captions file, e.g. annotations/captions_train2017.json')
    parser.add_argument('--output', required=True, help='output folder')
    parser.add_argument('--scales', type=common.positive_int, nargs='+', default=[2, 4, 8], help='Default: 2 4 8')
    parser.add_argument(
        '--min-size',
        type=common.positive_int,
        default=512,
        help='drop images whose longest edge is smaller. Default: 512',
    )
    parser.add_argument('--crop-size', type=common.positive_int, default=320, help='sub-image size. Default: 320')
    parser.add_argument('--step', type=common.positive_int, default=None, help='crop stride. Default: crop size')
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
    common.add_common_args(parser)
    parser.add_argument('--lmdb', action='store_true', help='also pack GT/ and LRx*/ into basicsr image LMDBs')
    group = common.add_prompt_args(parser)
    group.add_argument('--prompts', action='store_true', help='build OUT/prompts_text.lmdb from --captions')


def read_captions(path, images, opt):
    """The captions of ``path`` (COCO format, checked by :func:`pdnsr.prompts.build.load_captions`), refused when
    an image that will be kept has none; sizes come from the file headers, so no image is decoded.

    Returns:
        dict[str, list[str]]: key -> captions.
    """
    captions = load_captions(path)
    missing = []
    for image in images:
        size = None if captions.get(image_key(image)) else image_size(image)
        if size is not None and drop_reason(*size, opt) is None:
            missing.append(image_key(image))
    if missing:
        raise UserError(
            f'{len(missing)} image(s) that will be kept have no caption in {path} (wrong split?): '
            f'{", ".join(missing[:5])}'
        )
    return captions


def run(args):
    """The command's body; see the module docstring. Returns the exit status."""
    args.step = args.step or args.crop_size
    scales = sorted(set(args.scales))
    bad = [s for s in scales if args.crop_size % s]
    if bad:
        raise UserError(f'--crop-size {args.crop_size} is not a multiple of scale(s) {bad}')
    if args.prompts and not args.captions:
        raise UserError('--prompts needs --captions FILE (the COCO captions_*.json)')
    if args.captions and not os.path.isfile(args.captions):
        raise UserError(f'captions file not found: {args.captions}')
    paths = common.list_images(args.images)
    opt = {
        'crop_size': args.crop_size,
        'step': args.step,
        'thresh_size': args.thresh_size,
        'min_size': args.min_size,
        'scales': scales,
        'sigma': args.sigma,
    }
    captions = read_captions(args.captions, paths, opt) if args.prompts else None
    check_output_folder(args.output)
    check_apart(args.output, '--output', reads={'--images': args.images}, refers={'--captions': args.captions})
    store = os.path.join(args.output, 'prompts_text.lmdb')
    encoder = None
    if args.prompts and common.prompt_store_needs_encoder(args, 'text', store):
        encoder = common.load_encoder(args)

    subdirs = ['GT'] + [f'LRx{s}' for s in scales]
    common.prepare_output(args.output, subdirs, dict(opt, script=SCRIPT), args.overwrite)
    opt.update(png_params=[cv2.IMWRITE_PNG_COMPRESSION, args.compress_level], overwrite=args.overwrite)
    tasks = [(p, args.output, opt) for p in paths]
    folders = [os.path.join(args.output, sub) for sub in subdirs]
    results, skipped = common.process_images(process_image, tasks, args, 'crop+LR', folders)

    names = [f'{r[0]}_s{i:03d}.png' for r in results for i in range(1, r[2] + 1)]
    common.finish_output(args.output, [f'{sub}/{name}' for name in names for sub in subdirs], args.overwrite)
    kept = [r[0] for r in results if r[1] == 'kept']
    small = sum(r[1] == 'small' for r in results)
    narrow = sum(r[1] == 'narrow' for r in results)
    crops = sum(r[2] for r in results)
    written = sum(r[3] for r in results)
    print(
        f'{len(paths)} images: {len(kept)} kept, {small} dropped (longest edge < {args.min_size}), '
        f'{narrow} dropped (an edge < {args.crop_size}){common.skipped_summary(skipped)}; {crops} sub-images '
        f'({written} written, {crops - written} already complete) in {", ".join(subdirs)}'
    )

    if args.lmdb:
        for sub in subdirs:
            lmdb_path = os.path.join(args.output, f'{sub}.lmdb')
            built = common.make_image_lmdb(os.path.join(args.output, sub), lmdb_path, args.overwrite, args.workers)
            print(f'{lmdb_path}: {"built" if built else "up to date, kept"}')

    if args.prompts:
        missing = [k for k in kept if not captions.get(k)]
        if missing:  # read_captions checked this from the headers; a header that lied is caught here
            raise UserError(
                f'{len(missing)} kept image(s) have no caption in {args.captions}: {", ".join(missing[:5])}'
            )
        n = common.build_prompts(args, 'text', store, kept, encoder, captions={k: captions[k] for k in kept})
        state = 'up to date, kept' if n is None else f'{n} keys'
        print(f'text prompt store {store} (keyed by parent image name): {state}')
    return 0
