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

    .venv/bin/python benchmarks/count_params.py [--quick]
"""

from common import make_parser, print_header, print_table, setup

# isort: split
import torch
from basicsr.archs.edsr_arch import EDSR
from basicsr.archs.rcan_arch import RCAN
from torch.utils.flop_counter import FlopCounterMode

from pdnsr.archs.dcm_arch import DynamicCorrelationModule
from pdnsr.archs.edsr_plus_arch import EDSRPlus
from pdnsr.archs.rcan_plus_arch import RCANPlus
from pdnsr.archs.rdn_arch import RDN, RDNPlus


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


def dcm_analytic(c, d, n=4, k=3, r=128):
    per_pixel = c * (c + 1) * k * k + (c + 2) * c
    # Matrix-vector products (P^T b_P, b_P . p_hat, |b_P|^2) are left out: FlopCounterMode does not count them.
    per_image = n * c * (c + 1) * d * k * k + n * c * (c + 1) * k * k + d * r + r * n + c * c * d + d * c + n * c
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
        ]

    print_header(device, f'parameters and MACs per LR pixel (x4, prompt_dim {d}, default DCM options)')
    rows = []
    for label, base_cls, plus_cls, kwargs in nets:
        kw = dict(num_in_ch=3, num_out_ch=3, upscale=4, **kwargs)
        base, plus = base_cls(**kw).to(device), plus_cls(prompt_dim=d, **kw).to(device)
        n_dcm = sum(isinstance(m, DynamicCorrelationModule) for m in plus.modules())
        bp, bi = macs_split(lambda s: (torch.rand(1, 3, s, s, device=device),), base, sizes)
        pp, pi = macs_split(
            lambda s: (torch.rand(1, 3, s, s, device=device), torch.randn(1, d, device=device)), plus, sizes
        )
        pb, pplus = count_params(base), count_params(plus)
        name_plus = plus_cls.__name__
        rows.append([label, fmt(pb), '', fmt(bp), '', fmt(bi), ''])
        rows.append(
            [f'{name_plus} ({n_dcm} DCMs)', fmt(pplus), f'{pplus / pb:.2f}×', fmt(pp), f'{pp / bp:.2f}×', fmt(pi), '']
        )
    print_table(
        ['network', 'params', '÷ baseline', 'MACs / LR pixel', '÷ baseline', 'MACs / image (fixed)'],
        [r[:-1] for r in rows],
    )

    c = 8 if args.quick else 64
    drows = []
    for k in (1, 3):
        dcm = DynamicCorrelationModule(c, d, kernel_size=k).to(device)

        def x_fn(s):
            return torch.randn(1, c, s, s, device=device), torch.randn(1, d, device=device)

        pix, img = macs_split(x_fn, dcm, sizes)
        lit_pix, _ = macs_split(x_fn, lambda x, p, m=dcm: m.forward_literal(x, p), sizes)
        a_pix, a_img = dcm_analytic(c, d, k=k)
        parts = {name: sum(p.numel() for p in mod.parameters()) for name, mod in dcm.named_children()}
        drows.append(
            [
                k,
                fmt(count_params(dcm)),
                fmt(dcm.weight.numel()),
                fmt(parts['proj']),
                fmt(parts['router']),
                fmt(pix),
                fmt(a_pix),
                fmt(img),
                fmt(a_img),
                fmt(lit_pix),
            ]
        )
    print(f'### One DCM (c = {c}, d = {d}, n = 4, router hidden 128)\n')
    print_table(
        [
            'k',
            'params',
            'of which kernels n·c·d·k²',
            'proj',
            'router',
            'MACs/pixel (counted)',
            'MACs/pixel (formula)',
            'MACs/image (counted)',
            'MACs/image (formula)',
            'literal path MACs/pixel (counted)',
        ],
        drows,
    )


if __name__ == '__main__':
    main()
