"""Parameters and multiply-adds (MACs) per LR pixel of every network and its "+" twin, plus the DCM on its own.

Paper-size configurations, x4, prompt_dim 512, default DCM options (n = 4 kernels, k = 3, router hidden 128).
MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2), which sees functional ops too, so
the DCM's ``F.conv2d`` on folded kernels, its ``bmm`` and its ``einsum`` kernel folding are all counted; element-wise
ops (ReLU, sigmoid, additions) are not, as usual. Every count is taken at two LR sizes (batch 1) and split into
a per-pixel slope and a per-image constant (the DCM's kernel folding does not depend on h x w):
``MACs(h, w) = per_pixel * h * w + per_image``.

DCM analytically (c features, d prompt dim, n kernels, k kernel size, r router hidden), folded path:
per pixel ``c (c + 1) k^2`` (grouped conv on [M x, M]) ``+ (c + 2) c`` (the mask's bmm);
per image ``n c (c + 1) d k^2`` (folding ``W_k o P`` and ``W_k b_P``) ``+ n c (c + 1) k^2`` (mixing)
``+ d r + r n`` (router) ``+ c c d`` (Gram ``P^T P``) ``+ d c`` (``P^T p``) ``+ n c`` (bias mix); the dominant
term is the folding, ``n c (c + 1) d k^2`` (about 76 M MACs for c = 64, d = 512, k = 3), once per image per DCM.
The compact bank (``dcm: {bank: compact}``) stores the folded kernels, so its per-image term drops the folding:
``n c (c + 1) k^2 + d r + r n + c c d + d c + n c``; its per-pixel cost is the same.

Parameter targets (compact bank, x4 defaults): EDSR+ <= 4x EDSR, RCAN+ <= 1.6x RCAN, RDN+ <= 1.2x RDN.

    .venv/bin/python benchmarks/count_params.py [--quick]
"""

from bench_networks import network_args, swinir_args
from common import make_parser, print_header, print_table, run_benchmark, setup, verdict

# isort: split
import torch
from basicsr.archs.edsr_arch import EDSR
from basicsr.archs.rcan_arch import RCAN
from basicsr.archs.rrdbnet_arch import RRDBNet
from basicsr.archs.swinir_arch import SwinIR
from torch.utils.flop_counter import FlopCounterMode

from pdnsr.archs.dcm_arch import BANKS, DynamicCorrelationModule
from pdnsr.archs.edsr_plus_arch import EDSRPlus
from pdnsr.archs.prompt_guided_arch import RRDBNetPlus, SwinIRPlus
from pdnsr.archs.rcan_plus_arch import RCANPlus
from pdnsr.archs.rdn_arch import RDN, RDNPlus

# Parameters of the "+" network with the compact bank over its baseline's, at most (issue: a lightweight DCM).
PARAM_TARGETS = {'EDSR': 4.0, 'RCAN': 1.6, 'RDN': 1.2}


def count_params(net):
    return sum(p.numel() for p in net.parameters())


def macs(net, inputs):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(*inputs)
    return counter.get_total_flops() / 2


def macs_split(make_inputs, net, sizes):
    """(per LR pixel, per image) MACs from counts at two square sizes."""
    (s1, s2) = sizes
    m1, m2 = macs(net, make_inputs(s1)), macs(net, make_inputs(s2))
    per_pixel = (m2 - m1) / (s2 * s2 - s1 * s1)
    return per_pixel, m1 - per_pixel * s1 * s1


def dcm_analytic(c, d, n=4, k=3, r=128, bank='paper'):
    per_pixel = c * (c + 1) * k * k + (c + 2) * c
    # Matrix-vector products (P^T b_P, b_P . p_hat, |b_P|^2) are left out: FlopCounterMode does not count them.
    per_image = n * c * (c + 1) * k * k + d * r + r * n + c * c * d + d * c + n * c
    if bank == 'paper':
        per_image += n * c * (c + 1) * d * k * k  # folding W_k o P and W_k b_P
    return per_pixel, per_image


def fmt(n):
    return f'{n / 1e6:.3f} M' if abs(n) >= 1e5 else f'{n:,.0f}'


def main():
    parser = make_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    device = setup(args)
    d = 16 if args.quick else 512
    sizes = (8, 12) if args.quick else (16, 24)
    if args.quick:
        nets = [
            ('EDSR (tiny)', EDSR, EDSRPlus, dict(num_feat=8, num_block=2)),
            ('RCAN (tiny)', RCAN, RCANPlus, dict(num_feat=8, num_group=1, num_block=3, squeeze_factor=4)),
            ('RDN (tiny)', RDN, RDNPlus, dict(num_feat=8, num_block=2, num_layer=2, growth=8)),
            ('RRDBNet (tiny)', RRDBNet, RRDBNetPlus, dict(num_feat=8, num_block=2, num_grow_ch=4)),
            ('SwinIR (tiny)', SwinIR, SwinIRPlus, swinir_args(12, 2, 2, 4)),
        ]
    else:
        nets = [
            ('EDSR (16 blocks, 64 feat)', EDSR, EDSRPlus, dict(num_feat=64, num_block=16)),
            (
                'RCAN (10 groups x 20 blocks, 64 feat)',
                RCAN,
                RCANPlus,
                dict(num_feat=64, num_group=10, num_block=20, squeeze_factor=16),
            ),
            ('RDN (D16 C8 G64)', RDN, RDNPlus, dict(num_feat=64, num_block=16, num_layer=8, growth=64)),
            ('RRDBNet (ESRGAN, 23 RRDBs, 64 feat)', RRDBNet, RRDBNetPlus, dict(num_block=23)),
            ('SwinIR (classical, 6 x 6 blocks, 180 dim)', SwinIR, SwinIRPlus, swinir_args(180, 6, 6, 8)),
        ]

    print_header(device, f'parameters and MACs per LR pixel (x4, prompt_dim {d}, default DCM options)')
    rows = []
    for label, base_cls, plus_cls, kwargs in nets:
        kw = network_args(base_cls, 4, kwargs)
        base = base_cls(**kw).to(device)
        bp, bi = macs_split(lambda s: (torch.rand(1, 3, s, s, device=device),), base, sizes)
        pb = count_params(base)
        rows.append([label, '', fmt(pb), '', fmt(bp), '', fmt(bi), ''])
        for bank in BANKS:
            plus = plus_cls(prompt_dim=d, dcm=dict(bank=bank), **kw).to(device)
            n_dcm = sum(isinstance(m, DynamicCorrelationModule) for m in plus.modules())
            pp, pi = macs_split(
                lambda s: (torch.rand(1, 3, s, s, device=device), torch.randn(1, d, device=device)), plus, sizes
            )
            pplus = count_params(plus)
            target = PARAM_TARGETS.get(base_cls.__name__) if bank == 'compact' else None
            note = '' if target is None else verdict(pplus / pb, target, quick=args.quick)
            rows.append(
                [
                    f'{plus_cls.__name__} ({n_dcm} DCMs)',
                    bank,
                    fmt(pplus),
                    f'{pplus / pb:.2f}×',
                    fmt(pp),
                    f'{pp / bp:.2f}×',
                    fmt(pi),
                    note,
                ]
            )
    print_table(
        [
            'network',
            'DCM bank',
            'params',
            '÷ baseline',
            'MACs / LR pixel',
            '÷ baseline',
            'MACs / image (fixed)',
            'params target',
        ],
        rows,
    )

    c = 8 if args.quick else 64
    drows = []
    for k in (1, 3):
        for bank in BANKS:
            dcm = DynamicCorrelationModule(c, d, kernel_size=k, bank=bank).to(device)

            def x_fn(s):
                return torch.randn(1, c, s, s, device=device), torch.randn(1, d, device=device)

            pix, img = macs_split(x_fn, dcm, sizes)
            a_pix, a_img = dcm_analytic(c, d, k=k, bank=bank)
            parts = {name: sum(p.numel() for p in mod.parameters()) for name, mod in dcm.named_children()}
            kernels = sum(p.numel() for name, p in dcm.named_parameters(recurse=False) if name != 'zeta')
            drows.append(
                [
                    k,
                    bank,
                    fmt(count_params(dcm)),
                    fmt(kernels),
                    fmt(parts.get('proj', 0)),
                    fmt(parts['router']),
                    fmt(pix),
                    fmt(a_pix),
                    fmt(img),
                    fmt(a_img),
                ]
            )
        literal = DynamicCorrelationModule(c, d, kernel_size=k).to(device)
        lit_pix, _ = macs_split(x_fn, literal.forward_literal, sizes)
        drows.append([k, 'literal Eq. 2-4 (paper bank)', '', '', '', '', fmt(lit_pix), '', '', ''])
    print(f'### One DCM (c = {c}, d = {d}, n = 4, router hidden 128)\n')
    print_table(
        [
            'k',
            'bank',
            'params',
            'of which kernel bank and biases',
            'proj',
            'router',
            'MACs/pixel (counted)',
            'MACs/pixel (formula)',
            'MACs/image (counted)',
            'MACs/image (formula)',
        ],
        drows,
    )


if __name__ == '__main__':
    run_benchmark(main)
