"""One image, several text prompts: a figure of the DCM attention mask each prompt produces (paper Fig. 4 / 5).

The first panel is the image (the LR input enlarged, or the SR output of the first prompt); then one panel per
prompt: its attention mask as a heat map (blue 0, red 1; absolute colours, so panels compare) over that prompt's
SR output (or over the enlarged LR), with the prompt printed underneath.

Example (from the repository root):

    python scripts/visualize_attention.py --opt options/test_rcan_x4.yml --weights model.pth \\
        --image datasets/benchmarks/Set14/LRx4/zebra.png --prompt "a zebra" --prompt "green grass" \\
        --output results/zebra_attention.png
"""

import argparse
import os
import sys

import _checkout  # noqa: F401  (this checkout's pdnsr, basicsr patched)

# isort: split

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from pdnsr.data.image_files import IMAGE_SUFFIXES, is_image_name, read_rgb, write_image  # noqa: E402
from pdnsr.errors import run_main  # noqa: E402
from pdnsr.inference import Upsampler  # noqa: E402
from pdnsr.tools.cli import add_clip_arguments, check_apart, check_output_folder  # noqa: E402
from pdnsr.tools.infer import add_tile_arguments  # noqa: E402
from pdnsr.utils.visualization import overlay_heatmap, with_colour_bar  # noqa: E402

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--opt', help='option YAML with network_g (default: the network the checkpoint records)')
    parser.add_argument('--weights', required=True, help='checkpoint .pth (params_ema, else params)')
    parser.add_argument('--image', required=True, help='LR image')
    parser.add_argument('--prompt', action='append', required=True, help='a text prompt; repeat for several')
    parser.add_argument('--dcm', type=int, default=-1, help='DCM whose mask is shown (default -1: the last)')
    parser.add_argument(
        '--background',
        choices=('sr', 'lr'),
        default='sr',
        help="draw masks over each prompt's SR output (default) or over the enlarged LR input",
    )
    parser.add_argument('--output', required=True, help='figure file (PNG)')
    add_clip_arguments(parser, for_model=True)
    add_tile_arguments(parser)
    return parser.parse_args(argv)


def wrap_text(text, width, scale, thickness=1):
    """Split ``text`` into lines no wider than ``width`` pixels in the figure font (a long word gets its own line)."""
    lines, line = [], ''
    for word in text.split():
        candidate = f'{line} {word}'.strip()
        if line and cv2.getTextSize(candidate, _FONT, scale, thickness)[0][0] > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + [line] if line else lines


def compose_figure(panels, captions):
    """Panels (list of (H, W, 3) uint8 BGR, same size) side by side, each caption wrapped in a white strip below.

    Returns:
        np.ndarray: (H + strip, n * (W + gap) - gap, 3) uint8 BGR.
    """
    h, w = panels[0].shape[:2]
    gap = max(4, w // 40)
    scale = float(np.clip(w / 400, 0.35, 1.0))  # readable on small panels, not huge on large ones
    thickness = 1 if scale < 0.7 else 2
    line_h = cv2.getTextSize('Ag', _FONT, scale, thickness)[0][1] * 2
    wrapped = [wrap_text(c, w - 2 * gap, scale, thickness) for c in captions]
    strip = line_h * max(len(lines) for lines in wrapped) + line_h // 2
    figure = np.full((h + strip, len(panels) * (w + gap) - gap, 3), 255, np.uint8)
    for k, (panel, lines) in enumerate(zip(panels, wrapped)):
        x0 = k * (w + gap)
        figure[:h, x0 : x0 + w] = panel
        for j, line in enumerate(lines):
            cv2.putText(figure, line, (x0 + gap, h + line_h * (j + 1)), _FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return figure


def make_figure(up, rgb, prompts, dcm=-1, background='sr', tile=None):
    """The figure for one LR image ``rgb`` ((h, w, 3) uint8 RGB) and text ``prompts`` with the
    :class:`~pdnsr.inference.Upsampler` ``up``: (H, W, 3) uint8 BGR, with the colour bar of the masks.

    All prompts run as one batch: the image repeated once per prompt.
    """
    if not up.takes_prompt:
        raise ValueError(f'{type(up.net).__name__} takes no prompt: attention masks need a "+" network')
    (index,) = up.attention_dcms([dcm], '--dcm')
    results = up.enhance_many(rgb, list(prompts), tile=tile, attention=[index])
    srs = [np.ascontiguousarray(sr[..., ::-1]) for sr, _ in results]
    size = (srs[0].shape[1], srs[0].shape[0])
    if background == 'lr':
        lr_big = cv2.resize(np.ascontiguousarray(rgb[..., ::-1]), size, interpolation=cv2.INTER_CUBIC)
        bases, first, first_caption = [lr_big] * len(prompts), lr_big, 'LR input (bicubic enlarged)'
    else:
        bases, first, first_caption = srs, srs[0], f'SR output, prompt "{prompts[0]}"'
    panels = [first] + [overlay_heatmap(base, masks[index]) for base, (_, masks) in zip(bases, results)]
    captions = [first_caption] + [f'DCM {index}: "{p}"' for p in prompts]
    return with_colour_bar(compose_figure(panels, captions))


def check_output(path):
    """Refuse an ``--output`` the figure could not be written to, before any work: a folder, a name without an image
    suffix, or a place that cannot be created or written."""
    if os.path.isdir(path):
        raise ValueError(f'--output {path} is a folder; name the figure file, e.g. {os.path.join(path, "figure.png")}')
    if not is_image_name(os.path.basename(path)):
        raise ValueError(f'--output {path}: name an image file ({", ".join(IMAGE_SUFFIXES)}), e.g. figure.png')
    check_output_folder(os.path.dirname(os.path.abspath(path)), '--output')


def run(args):
    """Write the figure of the parsed ``args``; raises the user errors of :data:`pdnsr.errors.USER_ERRORS`."""
    check_output(args.output)
    refers = {'--weights': args.weights, '--opt': args.opt}
    check_apart(args.output, '--output', reads={'--image': args.image}, refers=refers)
    clip = dict(clip_model=args.clip_model, clip_pretrained=args.clip_pretrained, force_encoder=args.force_encoder)
    up = Upsampler.from_checkpoint(args.weights, args.opt, args.device, tile_pad=args.tile_pad, warn=_warn, **clip)
    rgb = read_rgb(args.image)
    figure = make_figure(up, rgb, args.prompt, dcm=args.dcm, background=args.background, tile=args.tile)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_image(args.output, figure)
    print(f'wrote {args.output} ({figure.shape[1]}x{figure.shape[0]}, {len(args.prompt)} prompts)', file=sys.stderr)


def _warn(message):
    print(f'warning: {message}', file=sys.stderr)


def main(argv=None):
    """Returns the exit status: 0, or 2 with a one-line message on a user error (:func:`pdnsr.tools.cli.run_main`)."""
    return run_main(lambda: run(parse_args(argv)), 'visualize_attention')


if __name__ == '__main__':
    sys.exit(main())
