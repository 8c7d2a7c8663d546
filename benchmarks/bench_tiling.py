"""Tiled vs whole-image inference: PSNR between the two outputs and the time of each (``pdnsr.inference``).

Paper-size networks at x4 (EDSR+ 16 blocks / 64 features, RDN+ D=16 C=8 G=64, RCAN+ 10 groups x 20 blocks), with
RANDOM weights from a fixed seed (not trained: the figures measure how faithfully tiling reproduces the whole-image
function, not SR quality) and a fixed random unit prompt. Inputs are Set14 images from
``../shared/data/benchmarks/Set14``: the whole image bicubic-downscaled (MATLAB-style) by 4, centre-cropped to at most
``--crop`` x ``--crop`` LR pixels.

"clipped" is the share of output values the [0, 1] clamp touched in the whole-image output: a random network
saturates part of its output, and clamped pixels agree trivially, so read PSNR together with it.

    .venv/bin/python benchmarks/bench_tiling.py [--images baboon barbara] [--crop 128] [--tile 64] [--pads 16 32 48]

``--quick`` runs two-block versions of the networks on a 32 x 32 crop (a smoke run, not a measurement).
"""

import os

from common import REPO_ROOT, make_parser, markdown_table, print_header, run_benchmark, setup, time_interleaved

# isort: split
import math

import numpy as np
import torch
from basicsr.archs import build_network
from basicsr.data.transforms import mod_crop

from pdnsr.inference import image_to_tensor, read_rgb, super_resolve
from pdnsr.utils.sample_data import bicubic_resize, centre_crop

SET14 = REPO_ROOT.parent / 'shared' / 'data' / 'benchmarks' / 'Set14'

NETWORKS = {
    'EDSR+': dict(type='EDSRPlus', num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, upscale=4),
    'RDN+': dict(type='RDNPlus', num_feat=64, num_block=16, num_layer=8, growth=64, upscale=4),
    'RCAN+': dict(type='RCANPlus', num_in_ch=3, num_out_ch=3, num_feat=64, num_group=10, num_block=20, upscale=4),
}
# --quick: the same layouts, a few blocks each, so that a smoke run takes seconds.
QUICK = {
    'EDSR+': dict(num_feat=16, num_block=2),
    'RDN+': dict(num_feat=16, num_block=2, num_layer=2, growth=16),
    'RCAN+': dict(num_feat=16, num_group=2, num_block=3, squeeze_factor=4),
}


def psnr(a, b):
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def load_crops(names, crop, scale):
    """{name: (1, 3, h, w) LR tensor}: the whole image mod-cropped, bicubic-downscaled, then centre-cropped to at most
    ``crop`` x ``crop`` LR pixels. Images that are absent are reported and skipped."""
    crops = {}
    for name in names:
        path = SET14 / f'{name}.png'
        if not path.is_file():
            print(f'skipped {name}: {path} not found (the Set14 benchmark images live in ../shared/data)')
            continue
        hr = read_rgb(str(path))
        lr = bicubic_resize(mod_crop(hr, scale), 1 / scale)
        crops[name] = image_to_tensor(centre_crop(lr, crop), 'cpu')
    return crops


def main():
    parser = make_parser(__doc__.split('\n\n')[0])
    parser.add_argument('--images', nargs='+', default=['baboon', 'barbara'], help='Set14 image names')
    parser.add_argument('--crop', type=int, default=128, help='largest LR side (default 128)')
    parser.add_argument('--tile', type=int, default=64, help='LR tile side (default 64)')
    parser.add_argument('--pads', type=int, nargs='+', default=[16, 32, 48], help='tile paddings (default 16 32 48)')
    parser.add_argument('--networks', nargs='+', default=list(NETWORKS), choices=list(NETWORKS))
    args = parser.parse_args()
    device = setup(args)
    if args.quick:
        args.crop, args.tile, args.pads, args.images = 32, 16, [8], args.images[:1]
    print_header(device, 'Tiled vs whole-image inference')
    crops = load_crops(args.images, args.crop, 4)
    if not crops:
        print(f'no input images found in {SET14}; nothing to measure')
        return
    sizes = ', '.join(f'{name} {lq.shape[3]}x{lq.shape[2]}' for name, lq in crops.items())
    print(
        f'random weights (seed 0, not trained), random unit prompt (seed 1), x4, LR inputs (Set14): {sizes}; '
        f'PSNR over RGB in [0, 1], tiled vs whole; times are medians over the images of one run each\n'
    )

    rows = []
    for label in args.networks:
        torch.manual_seed(0)
        net = build_network({**NETWORKS[label], **(QUICK[label] if args.quick else {})}).to(device).eval()
        gen = torch.Generator().manual_seed(1)
        prompt = torch.nn.functional.normalize(torch.randn(1, net.prompt_dim, generator=gen), dim=1).to(device)
        results = {}
        for name, lq in crops.items():
            lq = lq.to(device)
            outs = {}

            def runner(key, outs=outs, net=net, lq=lq, prompt=prompt, **kw):
                def fn():
                    outs[key] = super_resolve(net, lq, prompt, **kw)

                return fn

            fns = {'whole': runner('whole')}
            fns.update({pad: runner(pad, tile=args.tile, tile_pad=pad) for pad in args.pads})
            times = time_interleaved(fns, device=device, reps=args.reps or 1, warmup=0)
            whole = outs['whole']
            clipped = float(((whole <= 0) | (whole >= 1)).float().mean())
            results[name] = {key: (psnr(outs[key], whole), times[key][0], clipped) for key in fns}
        for key in ['whole', *args.pads]:
            vals = [results[name][key] for name in results]
            per_image = ', '.join(f'{v[0]:.1f}' for v in vals)
            rows.append(
                [
                    label,
                    'whole' if key == 'whole' else args.tile,
                    '—' if key == 'whole' else key,
                    '—' if key == 'whole' else f'{min(v[0] for v in vals):.1f} ({per_image})',
                    f'{np.median([v[1] for v in vals]):.2f}',
                    f'{100 * np.median([v[2] for v in vals]):.1f}%',
                ]
            )
        print(f'{label} done')
        del net
    print()
    print(
        markdown_table(
            ['network', 'tile', 'pad', 'PSNR tiled vs whole, dB: min (per image)', 'time s', 'clipped'], rows
        )
    )
    print(f'\n`{os.path.basename(__file__)}`: PSNR is inf when the outputs are bit-identical.')


if __name__ == '__main__':
    run_benchmark(main)
