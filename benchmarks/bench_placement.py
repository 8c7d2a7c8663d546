"""Hand-written "+" networks against the same DCMs placed by the generic mechanism (``PromptGuided``, hooks).

EDSR+ (``dcm_after: body.*``) and RDN+ (``dcm_after: rdbs.*``) have the same parameter names either way, so one
state dict drives both and the outputs must agree; this script checks that, then times forward + backward of
both, interleaved. RCAN+ is left out: its DCMs sit inside the residual groups under ``dcms.G.J``, names a flat
``dcm_after`` placement does not produce.

    .venv/bin/python benchmarks/bench_placement.py --threads 1 [--quick] [--reps 5]
"""

import common
from common import fwd_bwd, make_parser, min_ratio, paired_ratio, print_header, print_table, setup, time_interleaved

# isort: split
import torch
from basicsr.archs import build_network

from pdnsr.archs.edsr_plus_arch import EDSRPlus
from pdnsr.archs.rdn_arch import RDNPlus


def configs(quick):
    """(label, hand-written class, base type, dcm_after, kwargs)."""
    if quick:
        edsr, rdn = dict(num_feat=8, num_block=2), dict(num_feat=8, num_block=2, num_layer=2, growth=8)
    else:
        edsr, rdn = dict(num_feat=64, num_block=16), dict(num_feat=64, num_block=16, num_layer=8, growth=64)
    return [
        (f'EDSR+ ({edsr["num_block"]} blocks, {edsr["num_feat"]} feat)', EDSRPlus, 'EDSR', 'body.*', edsr),
        (f'RDN+ (D{rdn["num_block"]} C{rdn["num_layer"]} G{rdn["growth"]})', RDNPlus, 'RDN', 'rdbs.*', rdn),
    ]


def main():
    parser = make_parser(__doc__.splitlines()[0], reps=5, only=('edsr', 'rdn'))
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--size', type=int, default=48)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.size = 1, 12
    d = 16 if args.quick else 512
    device = setup(args)
    print_header(
        device,
        f'hand-written "+" network vs PromptGuided placement, forward + backward (batch {args.batch}, '
        f'{args.size}x{args.size} LR, x4, prompt_dim {d}, {args.reps} interleaved rounds)',
    )
    rows = []
    for label, hand_cls, base_type, after, kwargs in configs(args.quick):
        if args.only and base_type.lower() not in args.only:
            continue
        torch.manual_seed(0)
        kw = dict(num_in_ch=3, num_out_ch=3, upscale=4, **kwargs)
        hand = hand_cls(prompt_dim=d, **kw).to(device)
        placed = build_network(
            dict(type='PromptGuided', base=dict(type=base_type, **kw), dcm_after=after, prompt_dim=d)
        )
        same_names = list(placed.state_dict()) == list(hand.state_dict())
        placed.load_state_dict(hand.state_dict())
        placed.to(device)
        x = torch.rand(args.batch, 3, args.size, args.size, device=device)
        prompt = torch.randn(args.batch, d, device=device)
        with torch.no_grad():
            diff = (placed(x, prompt) - hand(x, prompt)).abs().max().item()
        res = time_interleaved(
            {'hand': fwd_bwd(hand, (x, prompt)), 'placed': fwd_bwd(placed, (x, prompt))}, device, reps=args.reps
        )
        (th, sh), (tp, sp) = res['hand'], res['placed']
        rows.append(
            [
                label,
                'yes' if same_names else 'NO',
                f'{diff:.1e}',
                f'{th * 1e3:.0f}',
                f'{tp * 1e3:.0f}',
                f'{tp / th:.3f}',
                f'{paired_ratio(sp, sh):.3f}',
                f'{min_ratio(sp, sh):.3f}',
            ]
        )
        print(f'  measured {label}')
    print()
    print_table(
        [
            'network',
            'same parameter names',
            'max abs output difference',
            'hand-written ms',
            'PromptGuided ms',
            'median ÷ median',
            'median of per-round ratios',
            'min ÷ min',
        ],
        rows,
    )


if __name__ == '__main__':
    common.run_benchmark(main)
