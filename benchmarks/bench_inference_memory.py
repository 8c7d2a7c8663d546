"""Tiled inference: peak resident memory and time against the input size, for EDSR+ and RCAN+.

Each configuration runs in a fresh child process that builds the network, makes a random LR image of the given
size and super-resolves it with ``pdnsr.inference.super_resolve`` (tile and padding as given); the child reports
its peak RSS (``ru_maxrss``) minus its RSS before inference. The SR output itself (3 x (s*H) x (s*W) float32)
must exist whatever the tiling, so the table also shows the peak minus the output buffer: the network's working
memory, which tiling should keep flat.

Networks are reduced in depth (EDSR+ 4 blocks, RCAN+ 2 groups x 4 blocks, 64 features, the default DCMs) so that
a 2-core CPU gets through 1024 x 1024 inputs: depth changes time, not the working memory of one tile much.

    .venv/bin/python benchmarks/bench_inference_memory.py [--sizes 256 512 1024] [--tile 128] [--quick]
"""

from common import make_parser, print_header, print_table, run_benchmark, setup

# isort: split
import json
import resource
import subprocess
import sys
import time

import torch

NETWORKS = {
    'EDSR+ (4 blocks)': dict(type='EDSRPlus', num_feat=64, num_block=4),
    'RCAN+ (2x4 blocks)': dict(type='RCANPlus', num_feat=64, num_group=2, num_block=4, squeeze_factor=16),
}


def rss_mib():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(name, size, tile, pad, scale, threads):
    """Runs in the child process: one super-resolution, prints a JSON line."""
    from basicsr.archs import build_network

    from pdnsr.inference import super_resolve

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_network(dict(NETWORKS[name], num_in_ch=3, num_out_ch=3, upscale=scale, prompt_dim=512)).eval()
    lq = torch.rand(1, 3, size, size)
    prompt = torch.nn.functional.normalize(torch.randn(1, 512), dim=1)
    before = rss_mib()
    start = time.perf_counter()
    sr = super_resolve(net, lq, prompt, tile=tile, tile_pad=pad)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps(dict(peak=peak - before, output=sr.numel() * 4 / 2**20, seconds=seconds)))


def main():
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument('--sizes', type=int, nargs='+', help='LR sides (square); default 256 512 1024')
    parser.add_argument('--tile', type=int, default=128)
    parser.add_argument('--tile-pad', type=int, default=32)
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--child', nargs=2, help='internal: run one configuration (network name, LR size)')
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.tile, args.tile_pad, args.scale, args.threads)
        return
    if args.quick:  # a smoke run: one tiny size, four tiles
        args.sizes, args.tile, args.tile_pad = args.sizes or [16], 8, 2
    args.sizes = args.sizes or [256, 512, 1024]
    device = setup(args)
    if device.type != 'cpu':
        raise SystemExit('bench_inference_memory.py measures resident (CPU) memory; run it with --device cpu')
    rows = []
    for name in NETWORKS:
        for size in args.sizes:
            cmd = [
                sys.executable,
                __file__,
                '--child',
                name,
                str(size),
                '--tile',
                str(args.tile),
                '--tile-pad',
                str(args.tile_pad),
                '--scale',
                str(args.scale),
                '--threads',
                str(args.threads),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f'{name} at {size}: child failed\n{proc.stderr[-2000:]}')
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(
                [
                    name,
                    f'{size}x{size}',
                    f'{args.tile} / {args.tile_pad}',
                    f'{res["peak"]:.0f}',
                    f'{res["output"]:.0f}',
                    f'{res["peak"] - res["output"]:.0f}',
                    f'{res["seconds"]:.1f}',
                ]
            )
    print_header(device, f'Tiled inference, x{args.scale}, random weights: peak memory against input size')
    print_table(
        [
            'network',
            'LR input',
            'tile / pad',
            'peak RSS growth (MiB)',
            'SR output buffer (MiB)',
            'peak − output (MiB)',
            'time (s)',
        ],
        rows,
    )


if __name__ == '__main__':
    run_benchmark(main)
