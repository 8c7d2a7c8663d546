"""Half precision: forward + backward under ``torch.autocast`` against float32, for the DCM and every "+" network.

bf16 on CPU; fp16 and bf16 on CUDA. Same weights, inputs and prompts for both runs. Reported: output finite,
relative error of the output ``|y_half - y_32| / |y_32|`` (Frobenius norms; target <= 1e-2), gradients (of the
input and every parameter) finite, and the relative error of the flattened parameter gradient (reported, no
target). The baselines are measured too, so that the DCM's share of the error can be told from bf16's own.
Small configurations (the issue's "small configs"): 16 features, a few blocks, prompt_dim 512.

    .venv/bin/python benchmarks/bench_amp.py [--device cpu|cuda] [--quick]
"""

from common import make_parser, print_header, print_table, run_benchmark, setup

# isort: split
import torch
from basicsr.archs.edsr_arch import EDSR
from basicsr.archs.rcan_arch import RCAN

from pdnsr.archs.dcm_arch import DynamicCorrelationModule
from pdnsr.archs.edsr_plus_arch import EDSRPlus
from pdnsr.archs.rcan_plus_arch import RCANPlus
from pdnsr.archs.rdn_arch import RDN, RDNPlus

TARGET = 1e-2


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def run(net, inputs, grad_out, device, dtype):
    """(output float32, input grad, flat param grad) of one forward + backward, under autocast when dtype."""
    net.zero_grad(set_to_none=True)
    x = inputs[0].detach().clone().requires_grad_(True)
    args = (x, *inputs[1:])
    with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = net(*args)
    out.float().backward(grad_out)
    grads = torch.cat([p.grad.float().flatten() for p in net.parameters() if p.grad is not None])
    return out.detach().float(), x.grad.detach().float(), grads


def main():
    parser = make_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    device = setup(args)
    d = 16 if args.quick else 512
    c = 8 if args.quick else 16
    b, s = (1, 8) if args.quick else (2, 24)
    scale = 2
    small = dict(num_in_ch=3, num_out_ch=3, upscale=scale, num_feat=c)
    cases = [
        ('DCM (alone, c=%d)' % c, lambda: DynamicCorrelationModule(c, d), 'feat'),
        ('DCM literal path', lambda: _Literal(DynamicCorrelationModule(c, d)), 'feat'),
        ('EDSR (4 blocks)', lambda: EDSR(num_block=4, **small), 'image'),
        ('EDSRPlus (4 blocks)', lambda: EDSRPlus(num_block=4, prompt_dim=d, **small), 'image+'),
        ('RCAN (2x4 blocks)', lambda: RCAN(num_group=2, num_block=4, squeeze_factor=4, **small), 'image'),
        (
            'RCANPlus (2x4 blocks)',
            lambda: RCANPlus(num_group=2, num_block=4, squeeze_factor=4, prompt_dim=d, num_dcm_per_group=2, **small),
            'image+',
        ),
        ('RDN (D3 C3 G16)', lambda: RDN(num_block=3, num_layer=3, growth=16, **small), 'image'),
        ('RDNPlus (D3 C3 G16)', lambda: RDNPlus(num_block=3, num_layer=3, growth=16, prompt_dim=d, **small), 'image+'),
    ]
    dtypes = [torch.bfloat16] if device.type == 'cpu' else [torch.float16, torch.bfloat16]

    print_header(
        device,
        f'autocast vs float32 (batch {b}, {s}x{s}, prompt_dim {d}); target: finite and output '
        f'relative error ≤ {TARGET:g} for the DCM and the "+" networks',
    )
    if device.type == 'cuda':
        print(f'GPU: {torch.cuda.get_device_name()}\n')
    rows = []
    for name, build, kind in cases:
        torch.manual_seed(0)
        net = build().to(device)
        for m in net.modules():  # start the DCMs away from the near-zero init, so their output carries weight
            if isinstance(m, DynamicCorrelationModule):
                m.reset_parameters(init_scale=1.0)
        prompt = torch.randn(b, d, device=device)
        if kind == 'feat':
            inputs = (torch.randn(b, c, s, s, device=device), prompt)
        elif kind == 'image+':
            inputs = (torch.rand(b, 3, s, s, device=device), prompt)
        else:
            inputs = (torch.rand(b, 3, s, s, device=device),)
        with torch.no_grad():
            shape = net(*inputs).shape
        grad_out = torch.randn(shape, device=device)
        ref = run(net, inputs, grad_out, device, None)
        for dtype in dtypes:
            out, gx, gp = run(net, inputs, grad_out, device, dtype)
            finite = bool(torch.isfinite(out).all())
            gfinite = bool(torch.isfinite(gx).all() and torch.isfinite(gp).all())
            err = rel(out, ref[0])
            judged = kind != 'image'
            ok = finite and gfinite and err <= TARGET
            rows.append(
                [
                    name,
                    str(dtype).replace('torch.', ''),
                    'yes' if finite else 'NO',
                    f'{err:.2e}',
                    'yes' if gfinite else 'NO',
                    f'{rel(gx, ref[1]):.2e}',
                    f'{rel(gp, ref[2]):.2e}',
                    ('met' if ok else 'MISSED')
                    if judged and not args.quick
                    else ('baseline (context)' if not judged else 'n/a (--quick)'),
                ]
            )
    print_table(
        [
            'module',
            'autocast dtype',
            'output finite',
            'output rel. err',
            'grads finite',
            'input-grad rel. err',
            'param-grad rel. err',
            'target',
        ],
        rows,
    )


class _Literal(torch.nn.Module):
    def __init__(self, dcm):
        super().__init__()
        self.dcm = dcm

    def forward(self, x, prompt):
        return self.dcm.forward_literal(x, prompt)


if __name__ == '__main__':
    run_benchmark(main)
