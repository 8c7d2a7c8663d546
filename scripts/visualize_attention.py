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
import torch  # noqa: E402

from pdnsr.archs.dcm_arch import select_dcms, takes_prompt  # noqa: E402
from pdnsr.cli import add_clip_arguments, check_output_folder, run_main  # noqa: E402
from pdnsr.data.image_files import IMAGE_SUFFIXES, is_image_name, read_rgb, write_image  # noqa: E402
from pdnsr.infer_cli import add_tile_arguments  # noqa: E402
from pdnsr.inference import (  # noqa: E402
    image_to_tensor,
    load_network,
    prompt_encoder_for,
    super_resolve,
    tensor_to_bgr,
)
from pdnsr.utils.visualization import overlay_heatmap  # noqa: E402

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--opt', required=True, help='option YAML with the network_g section')
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


def make_figure(net, encoder, rgb, prompts, dcm=-1, background='sr', tile=None, tile_pad=32, device='cpu'):
    """The figure for one LR image ``rgb`` ((h, w, 3) uint8 RGB) and text ``prompts``; (H, W, 3) uint8 BGR.

    All prompts run as one batch: the image repeated once per prompt.
    """
    chosen = select_dcms(net, [dcm], '--dcm')
    if not chosen:
        raise ValueError(f'{type(net).__name__} has no DCM: attention masks need a "+" network')
    (index,) = chosen
    emb = encoder.encode_text(list(prompts)).to(device)  # (n, d)
    lq = image_to_tensor(rgb, device).expand(len(prompts), -1, -1, -1)
    sr, masks = super_resolve(net, lq, emb, tile=tile, tile_pad=tile_pad, keep_attention=True)
    if index not in masks:
        raise ValueError(f'DCM {index} has no attention mask (built with use_attention: false)')
    srs = [tensor_to_bgr(sr[i]) for i in range(len(prompts))]
    size = (srs[0].shape[1], srs[0].shape[0])
    if background == 'lr':
        lr_big = cv2.resize(np.ascontiguousarray(rgb[..., ::-1]), size, interpolation=cv2.INTER_CUBIC)
        bases, first, first_caption = [lr_big] * len(prompts), lr_big, 'LR input (bicubic enlarged)'
    else:
        bases, first, first_caption = srs, srs[0], f'SR output, prompt "{prompts[0]}"'
    panels = [first] + [overlay_heatmap(base, masks[index][i, 0]) for i, base in enumerate(bases)]
    captions = [first_caption] + [f'DCM {index}: "{p}"' for p in prompts]
    return compose_figure(panels, captions)


def check_output(path):
    """Refuse an ``--output`` the figure could not be written to, before any work: a folder, a name without an image
    suffix, or a place that cannot be created or written."""
    if os.path.isdir(path):
        raise ValueError(f'--output {path} is a folder; name the figure file, e.g. {os.path.join(path, "figure.png")}')
    if not is_image_name(os.path.basename(path)):
        raise ValueError(f'--output {path}: name an image file ({", ".join(IMAGE_SUFFIXES)}), e.g. figure.png')
    check_output_folder(os.path.dirname(os.path.abspath(path)), '--output')


def run(args):
    """Write the figure of the parsed ``args``; raises the user errors of :data:`pdnsr.cli.USER_ERRORS`."""
    check_output(args.output)
    net, device, record = load_network(args.opt, args.weights, args.device)
    if not takes_prompt(net):
        raise ValueError(f'{type(net).__name__} takes no prompt: attention masks need a "+" network')
    rgb = read_rgb(args.image)
    encoder = prompt_encoder_for(
        record,
        net.prompt_dim,
        args.clip_model,
        args.clip_pretrained,
        device,
        args.force_encoder,
        warn=lambda message: print(f'warning: {message}', file=sys.stderr),
    )
    with torch.no_grad():
        figure = make_figure(
            net,
            encoder,
            rgb,
            args.prompt,
            dcm=args.dcm,
            background=args.background,
            tile=args.tile,
            tile_pad=args.tile_pad,
            device=device,
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_image(args.output, figure)
    print(f'wrote {args.output} ({figure.shape[1]}x{figure.shape[0]}, {len(args.prompt)} prompts)', file=sys.stderr)


def main(argv=None):
    """Returns the exit status: 0, or 2 with a one-line message on a user error (:func:`pdnsr.cli.run_main`)."""
    return run_main(lambda: run(parse_args(argv)), 'visualize_attention')


if __name__ == '__main__':
    sys.exit(main())
