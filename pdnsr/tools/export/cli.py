"""``pdnsr-export``: a trained pdnsr network as an ONNX graph or a spandrel file (see ``docs/deploy.md``).

    pdnsr-export --opt options/test_edsr_x4.yml --weights net_g.pth --output edsr_plus_x4.onnx          # two-input
    pdnsr-export --opt ... --weights ... --output edsr_plus_x4_zebra.onnx --prompt "a zebra on grass"   # baked
    pdnsr-export --opt ... --weights ... --output edsr_plus_x4.safetensors --prompt "a zebra on grass"  # spandrel

Exit status 0 once the file is written (an ONNX graph only after onnxruntime reproduced PyTorch on a random image);
2 for a user error (one line on stderr, :func:`pdnsr.tools.cli.run_main`), and then no file is left behind.
"""

import argparse
import os
import sys

from pdnsr.errors import UserError, run_main
from pdnsr.tools.cli import add_clip_arguments, add_view_argument, check_apart
from pdnsr.tools.export.onnx import MIN_OPSET, OPSET, check_opset

FORMATS = {'.onnx': 'onnx', '.safetensors': 'spandrel'}


def build_parser(prog='pdnsr-export'):
    parser = argparse.ArgumentParser(
        prog=prog,
        description='Export a pdnsr network: an ONNX graph (two inputs, image and prompt, or one prompt baked in) or '
        'a safetensors file with its prompt that spandrel loads (chaiNNer, ComfyUI).',
    )
    parser.add_argument('--opt', help='option YAML with network_g (default: the network the checkpoint records)')
    parser.add_argument('--weights', required=True, help='checkpoint .pth (params_ema, else params); paper or compact')
    parser.add_argument('--output', '-o', required=True, help='the file to write: .onnx or .safetensors')
    parser.add_argument(
        '--format',
        choices=sorted(set(FORMATS.values())),
        help='onnx or spandrel (default: from the suffix of --output, .onnx or .safetensors)',
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--prompt', help='text prompt to bake in (encoded once with CLIP)')
    group.add_argument('--prompt-image', help='image file whose CLIP embedding is the prompt to bake in')
    group.add_argument('--prompt-embedding', help='.npy file holding the prompt embedding to bake in, (d,) or (1, d)')
    add_view_argument(parser, '--prompt-view', 'the --prompt-image', default=None)
    add_clip_arguments(parser, for_model=True)
    onnx = parser.add_argument_group('ONNX only')
    onnx.add_argument('--half', action='store_true', help='float16 graph (inputs and outputs stay float32)')
    onnx.add_argument(
        '--fixed-size',
        metavar='HxW',
        help='static input size and batch 1 instead of dynamic N, H, W (needed by SwinIR; e.g. 64x64)',
    )
    onnx.add_argument('--opset', type=int, default=OPSET, help=f'ONNX opset (>= {MIN_OPSET}; default {OPSET})')
    return parser


def _format(args):
    suffix = os.path.splitext(args.output)[1].lower()
    fmt = args.format or FORMATS.get(suffix)
    if fmt is None:
        raise UserError(f'--output {args.output}: name it .onnx or .safetensors, or give --format onnx|spandrel')
    if fmt == 'spandrel':
        if args.half or args.fixed_size:
            raise UserError('--half and --fixed-size are for ONNX graphs; spandrel chooses the precision at run time')
        if args.prompt is None and args.prompt_image is None and args.prompt_embedding is None:
            raise UserError(
                'a spandrel file needs its prompt (spandrel calls a model with the image alone): give --prompt, '
                '--prompt-image or --prompt-embedding'
            )
    return fmt


def _fixed_size(text):
    if text is None:
        return None
    parts = text.lower().split('x')
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UserError(f'--fixed-size {text!r}: give the input size as HxW, e.g. 64x64')
    return int(parts[0]), int(parts[1])


def run(args):
    """The command's work once arguments are parsed: checks, load, encode the prompt, write; prints one line."""
    from pdnsr.tools.export import model, require

    fmt = _format(args)
    fixed_size = _fixed_size(args.fixed_size)
    if fmt == 'onnx':
        check_opset(args.opset)
    if args.prompt is not None:  # as pdnsr-infer refuses it; before anything loads (only CLIP's tokenizer is built)
        from pdnsr.prompts.encoder import check_prompt_length

        check_prompt_length(args.prompt, args.clip_model)
    # The packages of the deploy extra, before minutes of loading and encoding.
    for package in ('onnx', 'onnxruntime') if fmt == 'onnx' else ('spandrel', 'safetensors'):
        require(package, f'pdnsr-export --format {fmt}')
    refers = {'--opt': args.opt, '--prompt-image': args.prompt_image, '--prompt-embedding': args.prompt_embedding}
    check_apart(args.output, '--output', reads={'--weights': args.weights}, refers=refers)
    if os.path.isdir(args.output):
        raise UserError(f'--output {args.output} is a folder; give the file to write')
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise UserError(f'--output {args.output}: the folder {folder} does not exist')
    clip = dict(clip_model=args.clip_model, clip_pretrained=args.clip_pretrained, force_encoder=args.force_encoder)
    warn = lambda message: print(f'warning: {message}', file=sys.stderr)  # noqa: E731
    up, net, network_g, record = model.load_for_export(args.opt, args.weights, view=args.prompt_view, warn=warn, **clip)
    channels = model.input_channels(network_g)
    prompt, source = None, None
    given = {'text': args.prompt, 'image': args.prompt_image, 'embedding': args.prompt_embedding}
    given = [(kind, value) for kind, value in given.items() if value is not None]
    if given:  # at most one: the flags are mutually exclusive
        prompt, source = model.encode_prompt(up, *given[0])
    metadata = {'checkpoint': record, 'network_g': network_g, 'prompt': source}

    if fmt == 'spandrel':
        from pdnsr.tools.export.spandrel import save_spandrel

        config = save_spandrel(args.output, net, network_g, prompt, channels=channels, metadata=metadata)
        print(
            f'{args.output}: {network_g["type"]} x{config["scale"]} with its prompt ({source["kind"]}) for spandrel; '
            f'load it after pdnsr.tools.export.spandrel.install()'
        )
        return 0

    from pdnsr.tools.export.onnx import export_onnx

    meta = export_onnx(
        net,
        args.output,
        prompt=prompt,
        half=args.half,
        fixed_size=fixed_size,
        channels=channels,
        metadata=metadata,
        opset=args.opset,
    )
    check = meta['verified']
    shape = 'x'.join(map(str, check['shape']))
    print(
        f'{args.output}: {meta["graph"]} ONNX graph of {network_g["type"]} x{meta["scale"]} ({meta["dtype"]}, opset '
        f'{meta["opset"]}); onnxruntime vs PyTorch on a random {shape} image: max abs error '
        f'{check["max_abs_error"]:.2g}, PSNR {check["psnr_db"]:.1f} dB'
    )
    return 0


def main(argv=None, prog='pdnsr-export'):
    """Entry point of ``pdnsr-export`` / ``scripts/export_onnx.py``; returns the exit status (module docstring)."""
    return run_main(lambda: run(build_parser(prog).parse_args(argv)), prog)


if __name__ == '__main__':
    sys.exit(main())
