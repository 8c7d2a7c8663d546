"""Forward + backward time of each "+" network divided by its baseline's, same sizes, timed interleaved.

Sizes (the issue's): 64 features, 48 x 48 LR patches, batch 4, x4 upscaling, prompt_dim 512, default DCM options.
RCAN: the full 10 groups x 20 blocks and a 2-group (x 20 blocks) one; RDN: D = 16, C = 8, G = 64; EDSR: 16 blocks.
Each "+" network is timed with every kernel bank of ``--banks`` (default both: ``paper``, the paper's layout folded
at every forward, and ``compact``), interleaved with its baseline in the same rounds.

    .venv/bin/python benchmarks/bench_networks.py [--device cpu|cuda] [--quick] [--only rcan,rdn,edsr]
        [--banks paper,compact]
"""

from common import (
    fwd_bwd,
    make_parser,
    min_ratio,
    paired_ratio,
    print_header,
    print_table,
    run_benchmark,
    setup,
    spread,
    time_interleaved,
    verdict,
)

# isort: split
import torch
from basicsr.archs.edsr_arch import EDSR
from basicsr.archs.rcan_arch import RCAN
from basicsr.archs.rrdbnet_arch import RRDBNet
from basicsr.archs.swinir_arch import SwinIR

from pdnsr.archs.dcm_arch import BANKS
from pdnsr.archs.edsr_plus_arch import EDSRPlus
from pdnsr.archs.prompt_guided_arch import RRDBNetPlus, SwinIRPlus
from pdnsr.archs.rcan_plus_arch import RCANPlus
from pdnsr.archs.rdn_arch import RDN, RDNPlus


def network_args(base_cls, scale, kwargs):
    """Constructor arguments: basicsr's RRDBNet calls the factor ``scale``; SwinIR takes ``in_chans`` (default 3)."""
    if base_cls is RRDBNet:
        return dict(num_in_ch=3, num_out_ch=3, scale=scale, **kwargs)
    if base_cls is SwinIR:
        return dict(upscale=scale, **kwargs)
    return dict(num_in_ch=3, num_out_ch=3, upscale=scale, **kwargs)


def swinir_args(embed_dim, depth, layers, window):
    return dict(
        embed_dim=embed_dim, depths=[depth] * layers, num_heads=[6] * layers, window_size=window, img_size=48,
        mlp_ratio=2.0, upsampler='pixelshuffle', img_range=1.0,
    )  # fmt: skip


# key -> (baseline class, "+" class, target, [(size label, arguments)] of --quick, the same at full size)
PAIRS = {
    'edsr': (EDSR, EDSRPlus, 1.5, [('2 blocks, 8 feat', dict(num_feat=8, num_block=2))],
             [('16 blocks, 64 feat', dict(num_feat=64, num_block=16))]),
    'rcan': (RCAN, RCANPlus, 1.12, [('1 group x 3 blocks, 8 feat', dict(num_feat=8, num_group=1, num_block=3,
                                                                        squeeze_factor=4))],
             [(f'{g} groups x 20 blocks, 64 feat', dict(num_feat=64, num_group=g, num_block=20, squeeze_factor=16))
              for g in (2, 10)]),
    'rdn': (RDN, RDNPlus, 1.15, [('D2 C2 G8, 8 feat', dict(num_feat=8, num_block=2, num_layer=2, growth=8))],
            [('D16 C8 G64, 64 feat', dict(num_feat=64, num_block=16, num_layer=8, growth=64))]),
    'rrdbnet': (RRDBNet, RRDBNetPlus, None, [('2 RRDBs, 8 feat', dict(num_feat=8, num_block=2, num_grow_ch=4))],
                [('23 RRDBs, 64 feat', dict(num_block=23))]),
    'swinir': (SwinIR, SwinIRPlus, None, [('2 x 2 blocks, 12 dim', swinir_args(12, 2, 2, 4))],
               [('6 x 6 blocks, 180 dim', swinir_args(180, 6, 6, 8))]),
}  # fmt: skip


def configs(quick):
    """(key, label, baseline class, "+" class, kwargs, target) of every pair and size."""
    return [
        (key, f'{plus.__name__[:-4]}+ / {base.__name__} ({size})', base, plus, kwargs, target)
        for key, (base, plus, target, small, full) in PAIRS.items()
        for size, kwargs in (small if quick else full)
    ]


def main():
    parser = make_parser(__doc__.splitlines()[0], reps=5, only=PAIRS)
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--size', type=int, default=48)
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--prompt-dim', type=int, default=512)
    parser.add_argument('--banks', default='paper,compact', help='DCM kernel banks to time (default paper,compact)')
    args = parser.parse_args()
    banks = [b for b in args.banks.split(',') if b]
    unknown = sorted(set(banks) - set(BANKS))
    if unknown or not banks:
        parser.error(f'--banks: unknown bank(s) {unknown}; choose from {list(BANKS)}')
    if args.quick:
        args.batch, args.size, args.prompt_dim = 1, 12, 16
    device = setup(args)

    print_header(
        device,
        f'"+" network ÷ baseline, forward + backward (batch {args.batch}, {args.size}x{args.size} '
        f'LR, x{args.scale}, prompt_dim {args.prompt_dim}, {args.reps} interleaved rounds)',
    )
    rows = []
    for key, label, base_cls, plus_cls, kwargs, target in configs(args.quick):
        if args.only and key not in args.only:
            continue
        torch.manual_seed(0)
        common_kw = network_args(base_cls, args.scale, kwargs)
        base = base_cls(**common_kw).to(device)
        x = torch.rand(args.batch, 3, args.size, args.size, device=device)
        prompt = torch.randn(args.batch, args.prompt_dim, device=device)
        steps = {'base': fwd_bwd(base, (x,))}
        for bank in banks:
            plus = plus_cls(prompt_dim=args.prompt_dim, dcm=dict(bank=bank), **common_kw).to(device)
            steps[bank] = fwd_bwd(plus, (x, prompt))
        res = time_interleaved(steps, device, reps=args.reps)
        tb, sb = res['base']
        for bank in banks:
            tp, sp = res[bank]
            ratio = paired_ratio(sp, sb)
            rows.append(
                [
                    label,
                    bank,
                    f'{tb * 1e3:.0f}',
                    f'{tp * 1e3:.0f}',
                    spread(sb),
                    spread(sp),
                    f'{tp / tb:.3f}',
                    f'{ratio:.3f}',
                    f'{min_ratio(sp, sb):.3f}',
                    verdict(ratio, target, quick=args.quick) if target else 'no target',
                ]
            )
        print(f'  measured {label}')
        del base, steps
    print()
    print_table(
        [
            'pair',
            'DCM bank',
            'baseline ms',
            '"+" ms',
            'baseline min–max',
            '"+" min–max',
            'median ÷ median',
            'median of per-round ratios',
            'min ÷ min',
            'target (on per-round ratio)',
        ],
        rows,
    )


if __name__ == '__main__':
    run_benchmark(main)
