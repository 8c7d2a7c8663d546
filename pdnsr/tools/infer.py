"""``pdnsr-infer``: super-resolve images with a pdnsr (or baseline) network from the command line.

    pdnsr-infer --weights model.pth --input datasets/benchmarks/Set5/LRx4 --output results/set5 \\
        --prompt "a baby wearing a knitted hat"

Exit status: 0 every image written; 1 some images of a folder could not be read, had no caption or did not fit in
memory (the others are written); 2 a user error (bad option, weights, prompt, device, or the one image of ``--input
FILE``), one line on stderr (:func:`pdnsr.errors.run_main`). The work is :class:`pdnsr.inference.Upsampler`'s; see
``docs/inference.md``.
"""

import argparse
import os
import sys

from tqdm import tqdm

from pdnsr.data.image_files import IMAGE_SUFFIXES, image_key, read_rgb, scan_images, write_image
from pdnsr.errors import USER_ERRORS, UserError, one_line, run_main
from pdnsr.inference import SELF_PROMPT, Upsampler
from pdnsr.prompts.build import load_captions
from pdnsr.tools.cli import add_clip_arguments, add_view_argument, check_apart, check_output_folder
from pdnsr.utils.visualization import attention_overlay

NO_PROMPT_WARNING = (
    'no prompt given (--prompt, --prompt-image or --captions): running with a zero prompt, i.e. a uniform 0.5 '
    'attention mask and the router bias mixture of kernels. The output is finite but this is not what the network '
    'was trained on; expect lower quality.'
)


def build_parser(prog='pdnsr-infer'):
    parser = argparse.ArgumentParser(
        prog=prog,
        description='Super-resolve images with a pdnsr network, guided by a text prompt, an image prompt or a '
        'caption file (one caption per input image).',
    )
    parser.add_argument(
        '--opt', help='option YAML with the network_g section (default: the network the checkpoint records)'
    )
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
        help='also write <key>_attention_dcm<i>.png: DCM masks over the SR image, with a colour bar from 0 to 1',
    )
    parser.add_argument(
        '--attention-dcms',
        type=int,
        nargs='+',
        default=[0, -1],
        help='DCM indices for --save-attention (default 0 -1: first and last; negative from the end)',
    )
    return parser


def add_tile_arguments(parser, tile_default='whole image'):
    """``--tile``, ``--tile-pad`` and ``--device`` of :class:`pdnsr.inference.Upsampler`, shared with
    ``scripts/visualize_attention.py`` and ``pdnsr-app``."""
    parser.add_argument('--tile', type=int, help=f'LR tile size (saves memory on large images); default {tile_default}')
    parser.add_argument('--tile-pad', type=int, default=32, help='LR context pixels around each tile (default 32)')
    parser.add_argument('--device', help='cpu, cuda, cuda:N (default cuda if available, else cpu)')


def upsampler_of(args, warn):
    """The :class:`Upsampler` of ``--weights`` (and ``--opt``) or of an ``--onnx`` graph, with the command's
    tiling, device and CLIP options."""
    clip = dict(clip_model=args.clip_model, clip_pretrained=args.clip_pretrained, force_encoder=args.force_encoder)
    tiling = dict(tile=args.tile, tile_pad=args.tile_pad, view=args.prompt_view, warn=warn, **clip)
    if args.onnx:  # an exported graph, run by onnxruntime (docs/deploy.md)
        from pdnsr.tools.export.onnx import network_for_cli

        net, device, record = network_for_cli(args)  # the record of the exported checkpoint, as a checkpoint's
        return Upsampler(net, record, device, **tiling)
    if not args.weights:
        raise ValueError('--weights is required (or --onnx MODEL.onnx, a graph from pdnsr-export)')
    return Upsampler.from_checkpoint(args.weights, args.opt, args.device, half=args.fp16, **tiling)


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


def _prompt_source(args, up, inputs, single=False):
    """``(prompt_of, missing)``: ``prompt_of(key)`` gives the prompt of one input (what :meth:`Upsampler.encode`
    takes, or an embedding), and ``missing`` lists the keys of ``inputs`` skipped for want of a caption. Every check
    that needs no CLIP comes first; CLIP is loaded here once, for what is encoded once.

    Raises:
        UserError: ``single`` (``--input FILE``) and the file has no caption in ``--captions``; a ``--prompt``
            longer than CLIP reads.
    """
    given = args.prompt is not None or args.prompt_image is not None or args.captions is not None
    if not up.takes_prompt and given:
        up.warn(f'{type(up.net).__name__} is a baseline network; the prompt is ignored')
    elif not given and up.takes_prompt:
        up.warn(NO_PROMPT_WARNING)
    if not up.takes_prompt or not given:
        return (lambda key: None), []
    captions = load_captions(args.captions, subset=args.captions_subset) if args.captions else None
    missing = [k for k in inputs if not captions.get(k)] if captions is not None else []
    if single and missing:
        raise UserError(f'{inputs[missing[0]]}: no caption for key {missing[0]!r} in {args.captions}')
    if args.prompt_image == SELF_PROMPT:
        up.encoder  # noqa: B018  (CLIP loaded, or refused, before the first image)
        return (lambda key: SELF_PROMPT), []
    if args.prompt is not None:
        up.check_prompt(args.prompt)
        emb = up.encode(args.prompt)
    elif args.prompt_image is not None:
        emb = up.encode(read_rgb(args.prompt_image))
    else:
        found = [k for k in inputs if captions.get(k)]
        rows = dict(zip(found, up.encode_texts([captions[k][0] for k in found], keys=found)))
        return rows.get, missing
    return (lambda key: emb), []


def _warn(message):
    print(f'warning: {message}', file=sys.stderr)


def run(args):
    """The CLI's work once arguments are parsed; returns the exit status (0 ok, 1 some images failed).

    Raises the user errors of :data:`pdnsr.errors.USER_ERRORS` (bad options, weights, prompt) before any image is
    read.
    """
    if args.captions_subset and not args.captions:
        raise ValueError('--captions-subset needs --captions')
    up = upsampler_of(args, _warn)
    attention = up.attention_dcms(args.attention_dcms, '--save-attention') if args.save_attention else False
    check_output_folder(args.output)
    reads = {'--input': args.input, '--prompt-image': args.prompt_image}
    check_apart(args.output, '--output', reads, {'--opt': args.opt, '--weights': args.weights, '--onnx': args.onnx})
    inputs = _collect_inputs(args.input)
    # --input FILE: its one image is read (and refused, exit 2) before CLIP is loaded; a folder's images are read one
    # at a time, and a bad one is skipped (exit 1).
    single = not os.path.isdir(args.input)
    images = {key: read_rgb(path) for key, path in inputs.items()} if single else {}
    prompt_of, missing = _prompt_source(args, up, inputs, single)

    failed = 0
    for key in missing:
        print(f'{inputs[key]}: no caption for key {key!r} in {args.captions}; skipped', file=sys.stderr)
        failed += 1
    name = f'{{}}_{args.suffix}.png' if args.suffix else '{}.png'
    for key in tqdm([k for k in inputs if k not in missing], desc='super-resolving', unit='image', file=sys.stderr,
                    disable=None):  # fmt: skip
        try:  # one bad image of a folder is reported and skipped; the others are still written
            rgb = images.pop(key) if single else read_rgb(inputs[key])
            result = up.enhance(rgb, prompt_of(key), attention=attention)
            sr, masks = result if attention else (result, {})
            bgr = sr[..., ::-1]
            pictures = {name.format(key): bgr}  # computed before any is written
            pictures.update({f'{key}_attention_dcm{i}.png': attention_overlay(bgr, m) for i, m in masks.items()})
            os.makedirs(args.output, exist_ok=True)  # now: a run that writes nothing leaves no folder
            for file_name, picture in pictures.items():
                write_image(os.path.join(args.output, file_name), picture)
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
