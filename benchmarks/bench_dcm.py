"""DCM speed: forward + backward time relative to one plain ``nn.Conv2d(64, 64, 3, 1, 1)`` on the same input.

Default sizes are the issue's: B = 16, c = 64, 48 x 48, d = 512, k = 3, n = 4 basis kernels. Prints

1. the ratio of the folded fast path (``DCM.forward``), the literal Eq. 2-4 path (``forward_literal``) and an
   alternative fold (bias term as its own 1-channel grouped conv instead of an extra input channel) to the plain
   conv, timed interleaved (median);
2. the fast path split into its parts (attention mask, kernel folding, the grouped per-sample conv, the rest),
   each timed forward + backward on its own, so a gap to the target can be explained;
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


def folded_split_bias(dcm, x, prompt, bias_by_unfold=False):
    """The fast path with the bias term ``conv(M, W b_P)`` as a separate 1-channel grouped conv.

    Same function as ``dcm.forward`` (checked in ``main``), built from the module's own pieces; the module itself
    concatenates ``[M x, M]`` into c + 1 channels and runs one grouped conv. ``bias_by_unfold`` computes the
    1-channel term as ``unfold(M)`` (B, k², hw) times the per-sample (c, k²) kernel in one ``bmm`` instead.
    """
    b, c, h, w = x.shape
    pad = dcm.kernel_size // 2
    proj_w = dcm.proj.weight.reshape(dcm.prompt_dim, c)
    mask = dcm._attention_folded(x, prompt, proj_w, dcm.proj.bias)
    pi = dcm.kernel_weights(prompt)
    w_x = torch.einsum('bn,nocij->bocij', pi, torch.einsum('nodij,dc->nocij', dcm.weight, proj_w))
    w_b = torch.einsum('bn,noij->boij', pi, torch.einsum('nodij,d->noij', dcm.weight, dcm.proj.bias))
    if bias_by_unfold:
        cols = F.unfold(mask, dcm.kernel_size, padding=pad)  # (B, k*k, h*w)
        bias_term = torch.bmm(w_b.reshape(b, c, -1), cols).reshape(b, c, h, w)
    else:
        bias_term = dcm._per_sample_conv(mask, w_b.unsqueeze(2), pad)
    out = dcm._per_sample_conv(mask * x, w_x, pad) + bias_term
    return out + (pi @ dcm.bias)[:, :, None, None]


class Part(nn.Module):
    """One piece of the fast path as a module, so it can be timed forward + backward on its own."""

    def __init__(self, dcm, which):
        super().__init__()
        self.dcm = dcm
        self.which = which

    def forward(self, x, prompt, mask, weight):
        dcm = self.dcm
        c = dcm.num_feat
        if self.which == 'mask':
            proj_w = dcm.proj.weight.reshape(dcm.prompt_dim, c)
            return dcm._attention_folded(x, prompt, proj_w, dcm.proj.bias)
        if self.which == 'fold':
            proj_w = dcm.proj.weight.reshape(dcm.prompt_dim, c)
            folded = torch.cat([
                torch.einsum('nodij,dc->nocij', dcm.weight, proj_w),
                torch.einsum('nodij,d->noij', dcm.weight, dcm.proj.bias).unsqueeze(2)], 2)
            return torch.einsum('bn,nocij->bocij', dcm.kernel_weights(prompt), folded)
        if self.which == 'conv':  # the grouped per-sample conv on c + 1 channels (inputs prepared outside)
            return dcm._per_sample_conv(torch.cat([mask * x, mask], 1), weight, dcm.kernel_size // 2)
        if self.which == 'conv_c':  # the same conv on the c channels M x only (what the alternative runs)
            return dcm._per_sample_conv(mask * x, weight[:, :, :c], dcm.kernel_size // 2)
        if self.which == 'conv_1':  # the alternative's separate 1-channel bias conv conv(M, W b_P)
            return dcm._per_sample_conv(mask, weight[:, :, c:], dcm.kernel_size // 2)
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
    parser.add_argument('--profile', action='store_true', help='also print torch.profiler key_averages of the fast '
                        'path')
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

    with torch.no_grad():  # the alternative must be the same function
        x64, p64, dcm64 = x.double(), prompt.double(), DynamicCorrelationModule(c, d, kernel_size=k).double()
        dcm64.load_state_dict({n: t.double() for n, t in dcm.state_dict().items()})
        dcm64 = dcm64.to(device)
        diff = max((folded_split_bias(dcm64, x64, p64, u) - dcm64(x64, p64)).abs().max().item() for u in (False, True))
    if diff > 1e-10:
        raise SystemExit(f'split-bias variant differs from DCM.forward by {diff:g} in float64')

    dparams = list(dcm.parameters())
    candidates = {
        'plain Conv2d(c, c, 3, 1, 1)': fwd_bwd_closure(lambda: conv(x), list(conv.parameters()), x),
        'DCM fast path (forward)': fwd_bwd_closure(lambda: dcm(x, prompt), dparams, x),
        'DCM alt: c-ch conv + 1-ch bias conv': fwd_bwd_closure(lambda: folded_split_bias(dcm, x, prompt), dparams, x),
        'DCM alt: c-ch conv + bias by unfold·bmm': fwd_bwd_closure(
            lambda: folded_split_bias(dcm, x, prompt, bias_by_unfold=True), dparams, x),
        'DCM literal (forward_literal)': fwd_bwd_closure(lambda: dcm.forward_literal(x, prompt), dparams, x),
    }
    results = time_interleaved(candidates, device, reps=reps, warmup=1)

    print_header(device, f'DCM forward + backward vs one plain conv (B={b}, c={c}, {s}x{s}, d={d}, k={k}, n=4)')
    base, base_samples = results['plain Conv2d(c, c, 3, 1, 1)']
    rows = []
    for name, (med, samples) in results.items():
        ratio = paired_ratio(samples, base_samples)
        note = verdict(ratio, TARGET, quick=args.quick) if name.startswith('DCM fast') else ''
        rows.append([name, f'{med * 1e3:.1f}', spread(samples), f'{med / base:.2f}', f'{ratio:.2f}',
                     f'{min_ratio(samples, base_samples):.2f}', note])
    print_table(['variant', 'median ms', 'min–max ms', 'median ÷ median', 'median of per-round ratios',
                 'min ÷ min', 'target (on per-round ratio)'], rows)

    # Parts of the fast path, each forward + backward with its own inputs requiring grad.
    with torch.no_grad():
        proj_w = dcm.proj.weight.reshape(d, c)
        mask0 = dcm._attention_folded(x, prompt, proj_w, dcm.proj.bias)
        weight0 = Part(dcm, 'fold')(x, prompt, None, None)
    mask_in = mask0.clone().requires_grad_(True)
    weight_in = weight0.clone().requires_grad_(True)
    parts = {name: Part(dcm, name) for name in ('mask', 'fold', 'conv', 'conv_c', 'conv_1')}
    part_fns = {
        'attention mask (_attention_folded)': fwd_bwd_closure(lambda: parts['mask'](x, prompt, None, None), dparams,
                                                              x),
        'kernel folding + router mix (per forward)': fwd_bwd_closure(lambda: parts['fold'](x, prompt, None, None),
                                                                     dparams),
        'grouped per-sample conv on [M·x, M] (c+1 ch)': fwd_bwd_closure(
            lambda: parts['conv'](x, prompt, mask_in, weight_in), [], x, mask_in, weight_in),
        'alt: grouped conv on M·x only (c ch)': fwd_bwd_closure(
            lambda: parts['conv_c'](x, prompt, mask_in, weight_in), [], x, mask_in, weight_in),
        'alt: grouped 1-ch bias conv on M': fwd_bwd_closure(
            lambda: parts['conv_1'](x, prompt, mask_in, weight_in), [], mask_in, weight_in),
        'plain Conv2d(c, c, 3, 1, 1)': candidates['plain Conv2d(c, c, 3, 1, 1)'],
        'DCM fast path (whole)': candidates['DCM fast path (forward)'],
    }
    part_results = time_interleaved(part_fns, device, reps=reps, warmup=1)
    whole, whole_samples = part_results['DCM fast path (whole)']
    base2, base2_samples = part_results['plain Conv2d(c, c, 3, 1, 1)']
    summed = sum(part_results[n][0] for n in list(part_fns)[:3])
    rows = [[name, f'{med * 1e3:.1f}', f'{paired_ratio(smp, base2_samples):.2f}',
             f'{min_ratio(smp, base2_samples):.2f}',
             f'{100 * med / whole:.0f}%' if not name.startswith('alt') else '(alternative)']
            for name, (med, smp) in part_results.items()]
    rows.append(['rest (M·x, cat, bias add, autograd glue) = whole − first three', f'{(whole - summed) * 1e3:.1f}',
                 f'{(whole - summed) / base2:.2f}', '', f'{100 * (whole - summed) / whole:.0f}%'])
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
