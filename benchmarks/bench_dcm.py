"""DCM speed: forward + backward time relative to one plain ``nn.Conv2d(64, 64, 3, 1, 1)`` on the same input.

Default sizes are the issue's: B = 16, c = 64, 48 x 48, d = 512, k = 3, n = 4 basis kernels. Prints

1. the ratio of the folded fast path (``DCM.forward``), the literal Eq. 2-4 path (``forward_literal``) and two
   alternative ways of computing the fast path's bias term ``conv(M, W b_P)`` (as one more input channel of the
   main grouped conv, an earlier version of the module; as a separate 1-channel grouped conv) to the plain conv,
   timed interleaved (median);
2. the fast path split into its parts (attention mask, kernel folding, the grouped per-sample conv, the bias term
   by unfold + batched matmul, the rest), each timed forward + backward on its own, so a gap can be explained;
3. with ``--profile``, torch.profiler's key_averages table of the fast path.

    .venv/bin/python benchmarks/bench_dcm.py [--device cpu|cuda] [--quick] [--profile]
"""

from common import (
    make_parser,
    min_ratio,
    paired_ratio,
    print_header,
    print_table,
    setup,
    spread,
    time_interleaved,
    verdict,
)

# isort: split
import torch
import torch.nn.functional as F
from torch import nn

from pdnsr.archs.dcm_arch import DynamicCorrelationModule

TARGET = 1.5


def folded_alternative(dcm, x, prompt, bias='concat'):
    """The fast path with another form of the bias term ``conv(M, W b_P)``; the same function as ``dcm.forward``.

    ``bias='concat'``: ``[M x, M]`` as c + 1 input channels of one grouped conv (an earlier version of the module);
    ``bias='conv1'``: a separate 1-channel grouped conv. The module itself uses ``unfold(M)`` and one ``baddbmm``.
    """
    b, c, h, w = x.shape
    pad = dcm.kernel_size // 2
    proj_w = dcm.proj.weight.reshape(dcm.prompt_dim, c)
    mask = dcm._attention_folded(x, prompt, proj_w, dcm.proj.bias)
    pi = dcm.kernel_weights(prompt)
    w_x = torch.einsum('bn,nocij->bocij', pi, torch.einsum('nodij,dc->nocij', dcm.weight, proj_w))
    w_b = torch.einsum('bn,noij->boij', pi, torch.einsum('nodij,d->noij', dcm.weight, dcm.proj.bias)).unsqueeze(2)
    if bias == 'concat':
        out = dcm._per_sample_conv(torch.cat([mask * x, mask], 1), torch.cat([w_x, w_b], 2), pad)
    else:
        out = dcm._per_sample_conv(mask * x, w_x, pad) + dcm._per_sample_conv(mask, w_b, pad)
    return out + (pi @ dcm.bias)[:, :, None, None]


class Part(nn.Module):
    """One piece of the fast path as a module, so it can be timed forward + backward on its own."""

    def __init__(self, dcm, which):
        super().__init__()
        self.dcm = dcm
        self.which = which

    def forward(self, x, prompt, mask, weight, weight_b):
        dcm = self.dcm
        c = dcm.num_feat
        b, _, h, w = x.shape
        pad = dcm.kernel_size // 2
        if self.which == 'mask':
            proj_w = dcm.proj.weight.reshape(dcm.prompt_dim, c)
            return dcm._attention_folded(x, prompt, proj_w, dcm.proj.bias)
        if self.which == 'fold':
            proj_w = dcm.proj.weight.reshape(dcm.prompt_dim, c)
            pi = dcm.kernel_weights(prompt)
            folded = torch.einsum('bn,nocij->bocij', pi, torch.einsum('nodij,dc->nocij', dcm.weight, proj_w))
            folded_b = torch.einsum('bn,noij->boij', pi, torch.einsum('nodij,d->noij', dcm.weight, dcm.proj.bias))
            return folded.sum() + folded_b.sum()
        if self.which == 'conv':  # the grouped per-sample conv on M x (inputs prepared outside)
            return dcm._per_sample_conv(mask * x, weight, pad)
        if self.which == 'bias':  # conv(M, W b_P) + b by unfold and one batched matmul, as the module does it
            patches = F.unfold(mask, dcm.kernel_size, padding=pad)
            return torch.baddbmm(torch.zeros(b, c, 1, device=x.device), weight_b.reshape(b, c, -1), patches)
        raise ValueError(self.which)


def fwd_bwd_closure(fn, params, *inputs):
    grads = {}

    def step():
        for p in params:
            p.grad = None
        for t in inputs:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                t.grad = None
        out = fn()
        if 'g' not in grads:
            grads['g'] = torch.randn_like(out)
        out.backward(grads['g'])

    return step


def main():
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--size', type=int, default=48)
    parser.add_argument('--feat', type=int, default=64)
    parser.add_argument('--prompt-dim', type=int, default=512)
    parser.add_argument('--kernel', type=int, default=3)
    parser.add_argument(
        '--profile', action='store_true', help='also print torch.profiler key_averages of the fast path'
    )
    args = parser.parse_args()
    if args.quick:
        args.batch, args.size, args.feat, args.prompt_dim = 2, 12, 8, 32
    reps = args.reps or (1 if args.quick else 11)
    device = setup(args)
    torch.manual_seed(0)
    b, c, s, d, k = args.batch, args.feat, args.size, args.prompt_dim, args.kernel

    conv = nn.Conv2d(c, c, 3, 1, 1).to(device)
    dcm = DynamicCorrelationModule(c, d, kernel_size=k).to(device)
    x = torch.randn(b, c, s, s, device=device, requires_grad=True)
    prompt = torch.randn(b, d, device=device)

    with torch.no_grad():  # the alternatives must be the same function
        x64, p64, dcm64 = x.double(), prompt.double(), DynamicCorrelationModule(c, d, kernel_size=k).double()
        dcm64.load_state_dict({n: t.double() for n, t in dcm.state_dict().items()})
        dcm64 = dcm64.to(device)
        ref = dcm64(x64, p64)
        diff = max((folded_alternative(dcm64, x64, p64, v) - ref).abs().max().item() for v in ('concat', 'conv1'))
    if diff > 1e-10:
        raise SystemExit(f'an alternative bias form differs from DCM.forward by {diff:g} in float64')

    dparams = list(dcm.parameters())
    candidates = {
        'plain Conv2d(c, c, 3, 1, 1)': fwd_bwd_closure(lambda: conv(x), list(conv.parameters()), x),
        'DCM fast path (forward)': fwd_bwd_closure(lambda: dcm(x, prompt), dparams, x),
        'DCM alt: bias as channel c+1 of the conv': fwd_bwd_closure(
            lambda: folded_alternative(dcm, x, prompt, 'concat'), dparams, x
        ),
        'DCM alt: bias as a 1-channel grouped conv': fwd_bwd_closure(
            lambda: folded_alternative(dcm, x, prompt, 'conv1'), dparams, x
        ),
        'DCM literal (forward_literal)': fwd_bwd_closure(lambda: dcm.forward_literal(x, prompt), dparams, x),
    }
    results = time_interleaved(candidates, device, reps=reps, warmup=1)

    print_header(device, f'DCM forward + backward vs one plain conv (B={b}, c={c}, {s}x{s}, d={d}, k={k}, n=4)')
    base, base_samples = results['plain Conv2d(c, c, 3, 1, 1)']
    rows = []
    for name, (med, samples) in results.items():
        ratio = paired_ratio(samples, base_samples)
        note = verdict(ratio, TARGET, quick=args.quick) if name.startswith('DCM fast') else ''
        rows.append(
            [
                name,
                f'{med * 1e3:.1f}',
                spread(samples),
                f'{med / base:.2f}',
                f'{ratio:.2f}',
                f'{min_ratio(samples, base_samples):.2f}',
                note,
            ]
        )
    print_table(
        [
            'variant',
            'median ms',
            'min–max ms',
            'median ÷ median',
            'median of per-round ratios',
            'min ÷ min',
            'target (on per-round ratio)',
        ],
        rows,
    )

    # Parts of the fast path, each forward + backward with its own inputs requiring grad.
    with torch.no_grad():
        proj_w = dcm.proj.weight.reshape(d, c)
        pi0 = dcm.kernel_weights(prompt)
        mask0 = dcm._attention_folded(x, prompt, proj_w, dcm.proj.bias)
        weight0 = torch.einsum('bn,nocij->bocij', pi0, torch.einsum('nodij,dc->nocij', dcm.weight, proj_w))
        weight_b0 = torch.einsum('bn,noij->boij', pi0, torch.einsum('nodij,d->noij', dcm.weight, dcm.proj.bias))
    mask_in = mask0.clone().requires_grad_(True)
    weight_in = weight0.clone().requires_grad_(True)
    weight_b_in = weight_b0.clone().requires_grad_(True)
    parts = {name: Part(dcm, name) for name in ('mask', 'fold', 'conv', 'bias')}

    def part(name):
        return lambda: parts[name](x, prompt, mask_in, weight_in, weight_b_in)

    part_fns = {
        'attention mask (_attention_folded)': fwd_bwd_closure(part('mask'), dparams, x),
        'kernel folding + router mix (per forward)': fwd_bwd_closure(part('fold'), dparams),
        'grouped per-sample conv on M·x (c ch)': fwd_bwd_closure(part('conv'), [], x, mask_in, weight_in),
        'bias term: unfold(M) · baddbmm': fwd_bwd_closure(part('bias'), [], mask_in, weight_b_in),
        'plain Conv2d(c, c, 3, 1, 1)': candidates['plain Conv2d(c, c, 3, 1, 1)'],
        'DCM fast path (whole)': candidates['DCM fast path (forward)'],
    }
    part_results = time_interleaved(part_fns, device, reps=reps, warmup=1)
    whole, whole_samples = part_results['DCM fast path (whole)']
    base2, base2_samples = part_results['plain Conv2d(c, c, 3, 1, 1)']
    summed = sum(part_results[n][0] for n in list(part_fns)[:4])
    rows = [
        [
            name,
            f'{med * 1e3:.1f}',
            f'{paired_ratio(smp, base2_samples):.2f}',
            f'{min_ratio(smp, base2_samples):.2f}',
            f'{100 * med / whole:.0f}%',
        ]
        for name, (med, smp) in part_results.items()
    ]
    rows.append(
        [
            'rest (M·x, adds, autograd glue) = whole − first four',
            f'{(whole - summed) * 1e3:.1f}',
            f'{(whole - summed) / base2:.2f}',
            '',
            f'{100 * (whole - summed) / whole:.0f}%',
        ]
    )
    print('### Fast path by part (each forward + backward on its own; ratios are medians of per-round ratios)\n')
    print_table(['part', 'median ms', '÷ plain conv (per-round)', '÷ plain conv (min ÷ min)', 'share of whole'], rows)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
        step = candidates['DCM fast path (forward)']
        with profile(activities=activities) as prof:
            for _ in range(max(1, reps // 2)):
                step()
        sort = 'cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
        print('### torch.profiler, DCM fast path forward + backward\n')
        print('```\n' + prof.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=40) + '\n```\n')


if __name__ == '__main__':
    main()
