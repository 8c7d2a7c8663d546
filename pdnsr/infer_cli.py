"""``pdnsr-infer``: super-resolve images with a pdnsr (or baseline) network from the command line.

    python scripts/inference_pdnsr.py --opt options/test_rcan_x4.yml --weights model.pth \\
        --input datasets/benchmarks/Set5/LRx4 --output results/set5 --prompt "a baby wearing a knitted hat"

Exit status: 0 every image written; 1 some images of a folder could not be read or had no caption (the others are
written); 2 a user error (bad option, weights, prompt, device, or the one image of ``--input FILE``), one line on
stderr (:func:`pdnsr.cli.run_main`). The work itself is :mod:`pdnsr.inference`; see ``docs/inference.md``.
"""

import argparse
import os
import sys

import torch
from tqdm import tqdm

from pdnsr.archs.dcm_arch import dcm_modules, select_dcms, takes_prompt
from pdnsr.cli import add_clip_arguments, add_view_argument, check_output_folder, run_main
from pdnsr.data.image_files import IMAGE_SUFFIXES, image_key, read_rgb, scan_images, write_image
from pdnsr.errors import USER_ERRORS, UserError, one_line
from pdnsr.inference import (
    check_tile_options,
    image_to_tensor,
    load_network,
    prompt_encoder_for,
    super_resolve,
    tensor_to_bgr,
)
from pdnsr.prompts.build import load_captions
from pdnsr.prompts.encoder import check_prompt_length
from pdnsr.utils.visualization import overlay_heatmap

NO_PROMPT_WARNING = (
    'no prompt given (--prompt, --prompt-image or --captions): running with a zero prompt, i.e. a uniform 0.5 '
    'attention mask and the router bias mixture of kernels. The output is finite but this is not what the network '
    'was trained on; expect lower quality.'
)
SELF_PROMPT = 'self'


def build_parser(prog='pdnsr-infer'):
    parser = argparse.ArgumentParser(
        prog=prog,
        description='Super-resolve images with a pdnsr network, guided by a text prompt, an image prompt or a '
        'caption file (one caption per input image).',
    )
    parser.add_argument('--opt', help='option YAML with the network_g section (train or test file); not with --onnx')
    parser.add_argument('--weights', help='checkpoint .pth (params_ema, else params); not with --onnx')
    parser.add_argument('--onnx', help='run this pdnsr-export graph with onnxruntime instead of --opt/--weights')
    parser.add_argument('--input', required=True, help='LR image file or folder of images')
    parser.add_argument('--output', required=True, help='output folder')
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--prompt', help='text prompt, used for every input image')
    group.add_argument(
        '--prompt-image',
        help='image file whose CLIP embedding is the prompt for every input; "self": each input is its own prompt '
        '(what image-prompt training uses: the LR image, flipped by default)',
    )
    group.add_argument(
        '--captions',
        help='JSON caption file: the first caption of each image key (file name '
        'without extension); images without a caption are reported and skipped',
    )
    parser.add_argument('--captions-subset', help='set name when the caption file holds several sets')
    add_view_argument(parser, '--prompt-view', 'the --prompt-image', default=None)
    add_clip_arguments(parser, for_model=True)
    add_tile_arguments(parser)
    parser.add_argument('--fp16', action='store_true', help='half-precision autocast (CUDA only)')
    parser.add_argument('--suffix', default='pdnsr', help='output name <key>_<suffix>.png (default pdnsr)')
    parser.add_argument(
        '--save-attention',
        action='store_true',
        help='also write <key>_attention_dcm<i>.png: DCM masks over the SR image',
    )
    parser.add_argument(
        '--attention-dcms',
        type=int,
        nargs='+',
        default=[0, -1],
        help='DCM indices for --save-attention (default 0 -1: first and last; negative from the end)',
    )
    return parser


def add_tile_arguments(parser):
    """``--tile``, ``--tile-pad`` and ``--device`` of :func:`pdnsr.inference.super_resolve`, shared with
    ``scripts/visualize_attention.py``."""
    parser.add_argument('--tile', type=int, help='LR tile size (saves memory on large images); default whole image')
    parser.add_argument('--tile-pad', type=int, default=32, help='LR context pixels around each tile (default 32)')
    parser.add_argument('--device', help='cpu, cuda, cuda:N (default cuda if available, else cpu)')


def _collect_inputs(path):
    """{key: file} of an image file or a folder of images."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = scan_images(path)
        if not files:
            raise ValueError(f'--input {path}: no image files ({", ".join(IMAGE_SUFFIXES)})')
        return files
    if not os.path.isfile(path):
        raise FileNotFoundError(f'--input {path} does not exist')
    return {image_key(path): path}


def _check_cli_options(args, device, net):
    """Every option that can be wrong, before CLIP is loaded or an image is read; returns the DCM indices of
    ``--save-attention`` (empty without it)."""
    check_tile_options(args.tile, args.tile_pad, names=('--tile', '--tile-pad'))
    if args.fp16 and device.type != 'cuda':
        raise ValueError(f'--fp16 needs a CUDA device; the device is {device}. Drop --fp16 to run in float32')
    if args.captions_subset and not args.captions:
        raise ValueError('--captions-subset needs --captions')
    if not args.save_attention:
        return []
    dcms = dcm_modules(net)
    if not dcms:
        raise ValueError(
            f'--save-attention: {type(net).__name__} has no DCM (a baseline network has no attention masks)'
        )
    if not all(m.use_attention for m in dcms):
        raise ValueError(
            '--save-attention: the DCMs of this network were built with use_attention: false; '
            'there are no attention masks to save'
        )
    return sorted(select_dcms(net, args.attention_dcms, '--attention-dcms'))


def _prompt_source(args, net, device, inputs, record, single=False):
    """``(prompt_of, missing)``: ``prompt_of(key, rgb)`` gives the (1, d) embedding for one input (None = no prompt),
    and ``missing`` lists the keys of ``inputs`` ({key: file}) skipped for want of a caption.

    Raises:
        UserError: ``single`` (``--input FILE``) and the file has no caption in ``--captions``; a ``--prompt``
            longer than CLIP reads (:func:`pdnsr.prompts.encoder.check_prompt_length`).
    """
    keys = list(inputs)
    prompt_given = args.prompt is not None or args.prompt_image is not None or args.captions is not None
    if not takes_prompt(net):
        if prompt_given:
            _warn(f'{type(net).__name__} is a baseline network; the prompt is ignored')
        return (lambda key, rgb: None), []
    if not prompt_given:
        _warn(NO_PROMPT_WARNING)
        return (lambda key, rgb: None), []

    # Read the cheap inputs before loading CLIP, so that their errors come first.
    captions = load_captions(args.captions, subset=args.captions_subset) if args.captions else None
    missing = [k for k in keys if not captions.get(k)] if captions is not None else []
    if single and missing:
        raise UserError(f'{inputs[missing[0]]}: no caption for key {missing[0]!r} in {args.captions}')
    own_image = args.prompt_image == SELF_PROMPT
    prompt_rgb = read_rgb(args.prompt_image) if args.prompt_image and not own_image else None
    encoder = prompt_encoder_for(
        record, net.prompt_dim, args.clip_model, args.clip_pretrained, device, args.force_encoder, warn=_warn
    )
    view = args.prompt_view or ((record or {}).get('prompt_encoder') or {}).get('view') or 'flip'
    if args.prompt is not None:
        check_prompt_length(args.prompt, encoder.model_name)
        emb = encoder.encode_text([args.prompt])
        return (lambda key, rgb: emb), []
    if own_image:
        return (lambda key, rgb: encoder.encode_images([rgb], view=view)), []
    if prompt_rgb is not None:
        emb = encoder.encode_images([prompt_rgb], view=view)
        return (lambda key, rgb: emb), []
    found = [k for k in keys if captions.get(k)]
    emb = encoder.encode_text([captions[k][0] for k in found], keys=found)
    rows = {k: emb[i : i + 1] for i, k in enumerate(found)}
    return (lambda key, rgb: rows[key]), missing


def _warn(message):
    print(f'warning: {message}', file=sys.stderr)


def _super_resolve_one(args, net, device, rgb, key, prompt_of, name, attention_dcms):
    """Super-resolve one image (H, W, 3) uint8 RGB; returns {file name: BGR picture} of the output and its attention
    pictures, all computed before any is written. Raises a user error naming nothing (the caller names the file)."""
    lq = image_to_tensor(rgb, device)
    prompt = prompt_of(key, rgb)
    prompt = None if prompt is None else prompt.to(device)
    with torch.autocast('cuda', dtype=torch.float16, enabled=args.fp16):
        result = super_resolve(
            net, lq, prompt, tile=args.tile, tile_pad=args.tile_pad, keep_attention=args.save_attention
        )
    sr, masks = result if args.save_attention else (result, None)
    sr_bgr = tensor_to_bgr(sr)
    pictures = {name.format(key): sr_bgr}
    pictures.update({f'{key}_attention_dcm{i}.png': overlay_heatmap(sr_bgr, masks[i][0, 0]) for i in attention_dcms})
    return pictures


def _write_pictures(folder, pictures):
    """Write {file name: BGR picture} into ``folder`` (created now: a run that writes nothing leaves no folder)."""
    os.makedirs(folder, exist_ok=True)
    for file_name, picture in pictures.items():
        write_image(os.path.join(folder, file_name), picture)


def run(args):
    """The CLI's work once arguments are parsed; returns the exit status (0 ok, 1 some images failed).

    Raises the user errors of :data:`pdnsr.cli.USER_ERRORS` (bad options, weights, prompt) before any image is read.
    """
    if args.onnx:  # an exported graph, run by onnxruntime (docs/deploy.md)
        from pdnsr.export.onnx import network_for_cli

        net, device, record = network_for_cli(args)  # the record of the exported checkpoint, as load_network's
    elif not (args.opt and args.weights):
        raise ValueError('--opt and --weights are required (or --onnx MODEL.onnx, a graph from pdnsr-export)')
    else:
        net, device, record = load_network(args.opt, args.weights, args.device)
    attention_dcms = _check_cli_options(args, device, net)
    check_output_folder(args.output)
    inputs = _collect_inputs(args.input)
    # --input FILE: its one image is read (and refused, exit 2) before CLIP is loaded; a folder's images are read one
    # at a time, and a bad one is skipped (exit 1).
    single = not os.path.isdir(args.input)
    images = {key: read_rgb(path) for key, path in inputs.items()} if single else {}
    prompt_of, missing = _prompt_source(args, net, device, inputs, record, single)

    failed = 0
    for key in missing:
        print(f'{inputs[key]}: no caption for key {key!r} in {args.captions}; skipped', file=sys.stderr)
        failed += 1
    todo = [k for k in inputs if k not in missing]
    name = f'{{}}_{args.suffix}.png' if args.suffix else '{}.png'
    for key in tqdm(todo, desc='super-resolving', unit='image', file=sys.stderr, disable=None):
        try:  # one bad image of a folder is reported and skipped; the others are still written
            rgb = images.pop(key) if single else read_rgb(inputs[key])
            pictures = _super_resolve_one(args, net, device, rgb, key, prompt_of, name, attention_dcms)
            _write_pictures(args.output, pictures)
        except USER_ERRORS as err:
            if single:
                raise UserError(f'{inputs[key]}: {one_line(err)}') from None
            tqdm.write(f'{inputs[key]}: {one_line(err)}; skipped', file=sys.stderr)
            failed += 1
    done = len(inputs) - failed
    print(
        f'{done} of {len(inputs)} images written to {args.output}' + (f'; {failed} failed' if failed else ''),
        file=sys.stderr,
    )
    return 1 if failed else 0


def main(argv=None, prog='pdnsr-infer'):
    """Entry point of ``pdnsr-infer`` / ``scripts/inference_pdnsr.py``; returns the exit status (module docstring)."""
    return run_main(lambda: run(build_parser(prog).parse_args(argv)), prog)


if __name__ == '__main__':
    sys.exit(main())
