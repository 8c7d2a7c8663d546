"""DCM speed: forward + backward time relative to one plain ``nn.Conv2d(64, 64, 3, 1, 1)`` on the same input.

Default sizes: c = 64, 48 x 48, d = 512, k = 3, n = 4 basis kernels, at batch 4 and 16 side by side. Prints

1. per batch size, the ratio to the plain conv of the compact bank (``bank='compact'``), the paper's bank (folded
   at every forward) and the literal Eq. 2-4 path, timed interleaved (median of per-round ratios);
2. the compact DCM split into its parts (attention mask, the grouped per-sample conv on ``M x``, the bias term by
   unfold + batched matmul, the rest), each timed forward + backward on its own, so a gap can be explained;
3. the per-sample grouped convolution against a dense one of the same size, with and without the input gradient
   and the mask product, which is where "grouped conv ÷ dense conv" differs between measurements;
4. with ``--profile``, torch.profiler's key_averages table of the compact DCM.

    .venv/bin/python benchmarks/bench_dcm.py [--device cpu|cuda] [--quick] [--profile] [--batches 4,16]
"""

import common
from common import make_parser, min_ratio, paired_ratio, print_header, print_table, setup, time_interleaved, verdict

# isort: split
import torch
import torch.nn.functional as F
from torch import nn

from pdnsr.archs.dcm_arch import DynamicCorrelationModule

TARGET = 1.5


def step(fn, *tensors):
    """Forward + backward of ``fn()`` against a fixed output gradient; the gradients of ``tensors`` are reset."""
    state = {}

    def run():
        for t in tensors:
            t.grad = None
        out = fn()
        if 'grad' not in state:
            state['grad'] = torch.randn_like(out)
        out.backward(state['grad'])

    return run


def per_sample_conv(inp, weight):
    b, c, h, w = inp.shape
    return F.conv2d(inp.reshape(1, b * c, h, w), weight.reshape(-1, c, 3, 3), padding=1, groups=b).view(b, -1, h, w)


def measure_batch(args, device, batch, reps):
    c, s, d, k = args.feat, args.size, args.prompt_dim, args.kernel
    torch.manual_seed(0)
    conv = nn.Conv2d(c, c, 3, 1, 1).to(device)
    dcms = {bank: DynamicCorrelationModule(c, d, kernel_size=k, bank=bank).to(device) for bank in ('compact', 'paper')}
    x = torch.randn(batch, c, s, s, device=device, requires_grad=True)
    prompt = torch.randn(batch, d, device=device)

    def dcm_step(dcm, fn):
        return step(fn, x, *dcm.parameters())

    candidates = {
        'plain Conv2d(c, c, 3, 1, 1)': step(lambda: conv(x), x, *conv.parameters()),
        'DCM, compact bank': dcm_step(dcms['compact'], lambda: dcms['compact'](x, prompt)),
        'DCM, paper bank (folded per forward)': dcm_step(dcms['paper'], lambda: dcms['paper'](x, prompt)),
    }
    if not args.no_literal:
        candidates['DCM, literal Eq. 2-4'] = dcm_step(dcms['paper'], lambda: dcms['paper'].forward_literal(x, prompt))
    results = time_interleaved(candidates, device, reps=reps, warmup=1)
    base = results['plain Conv2d(c, c, 3, 1, 1)'][1]
    rows = []
    for name, (med, samples) in results.items():
        ratio = paired_ratio(samples, base)
        note = verdict(ratio, TARGET, quick=args.quick) if name == 'DCM, compact bank' else ''
        rows.append([batch, name, f'{med * 1e3:.1f}', f'{ratio:.2f}', f'{min_ratio(samples, base):.2f}', note])

    # The compact DCM by part, each with its own inputs requiring grad.
    dcm = dcms['compact']
    with torch.no_grad():
        kernel, mask_kernel, bias, maps = dcm.mixed_kernels(prompt, x)
        mask0 = dcm._attention_folded(x, maps)
    mask_in = mask0.clone().requires_grad_(True)
    kernel_in = kernel.clone().requires_grad_(True)
    mask_kernel_in = mask_kernel.clone().requires_grad_(True)
    params = list(dcm.parameters())

    def mask_part():
        return dcm._attention_folded(x, dcm.mixed_kernels(prompt, x)[3])

    def bias_part():
        patches = F.unfold(mask_in, k, padding=k // 2)
        return torch.baddbmm(x.detach().view(batch, c, -1), mask_kernel_in, patches)

    parts = {
        'attention mask (router, maps, _FoldedMask)': step(mask_part, x, *params),
        'grouped per-sample conv on M·x': step(lambda: per_sample_conv(mask_in * x, kernel_in), x, mask_in, kernel_in),
        'bias term: unfold(M) · baddbmm': step(bias_part, mask_in, mask_kernel_in),
        'plain conv': candidates['plain Conv2d(c, c, 3, 1, 1)'],
        'DCM, compact bank (whole)': candidates['DCM, compact bank'],
    }
    part_results = time_interleaved(parts, device, reps=reps, warmup=1)
    whole = part_results['DCM, compact bank (whole)'][0]
    plain = part_results['plain conv'][1]
    summed = sum(part_results[n][0] for n in list(parts)[:3])
    part_rows = [
        [batch, name, f'{med * 1e3:.1f}', f'{paired_ratio(smp, plain):.2f}', f'{100 * med / whole:.0f}%']
        for name, (med, smp) in part_results.items()
    ]
    part_rows.append(
        [
            batch,
            'rest (kernel mixing, adds, autograd glue) = whole − first three',
            f'{(whole - summed) * 1e3:.1f}',
            f'{(whole - summed) / part_results["plain conv"][0]:.2f}',
            f'{100 * (whole - summed) / whole:.0f}%',
        ]
    )

    # Grouped versus dense: the same MACs, with and without the input gradient and the mask product.
    x_nograd = x.detach()
    dense_w = conv.weight
    grouped = {
        'dense conv, weight grad only': step(lambda: F.conv2d(x_nograd, dense_w, padding=1), dense_w),
        'grouped conv, weight grad only': step(lambda: per_sample_conv(x_nograd, kernel_in), kernel_in),
        'dense conv, input + weight grads': step(lambda: F.conv2d(x, dense_w, padding=1), x, dense_w),
        'grouped conv, input + weight grads': step(lambda: per_sample_conv(x, kernel_in), x, kernel_in),
        'grouped conv on M·x, input + mask + weight grads': parts['grouped per-sample conv on M·x'],
    }
    grouped_results = time_interleaved(grouped, device, reps=reps, warmup=1)
    ref = {
        'weight grad only': grouped_results['dense conv, weight grad only'][1],
        'input + weight grads': grouped_results['dense conv, input + weight grads'][1],
    }
    grouped_rows = []
    for name, (med, smp) in grouped_results.items():
        against = ref['weight grad only'] if 'weight grad only' in name else ref['input + weight grads']
        grouped_rows.append([batch, name, f'{med * 1e3:.1f}', f'{paired_ratio(smp, against):.2f}'])
    return rows, part_rows, grouped_rows


def main():
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument('--batches', default='4,16', help='comma-separated batch sizes (default 4,16)')
    parser.add_argument('--size', type=int, default=48)
    parser.add_argument('--feat', type=int, default=64)
    parser.add_argument('--prompt-dim', type=int, default=512)
    parser.add_argument('--kernel', type=int, default=3)
    parser.add_argument('--no-literal', action='store_true', help='skip the (slow) literal Eq. 2-4 path')
    parser.add_argument('--profile', action='store_true', help='also print torch.profiler key_averages (compact)')
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(',') if b]
    if args.quick:
        batches, args.size, args.feat, args.prompt_dim = [2], 12, 8, 32
    reps = args.reps or (1 if args.quick else 9)
    device = setup(args)

    print_header(
        device,
        f'DCM forward + backward ÷ one plain conv (c={args.feat}, {args.size}x{args.size}, d={args.prompt_dim}, '
        f'k={args.kernel}, n=4, batches {batches})',
    )
    rows, part_rows, grouped_rows = [], [], []
    for batch in batches:
        r, p, g = measure_batch(args, device, batch, reps)
        rows += r
        part_rows += p
        grouped_rows += g
        print(f'  measured batch {batch}')
    print()
    print_table(['batch', 'variant', 'median ms', '÷ plain conv (per-round)', 'min ÷ min', 'target'], rows)
    print('### Compact DCM by part (each forward + backward on its own; ratios are medians of per-round ratios)\n')
    print_table(['batch', 'part', 'median ms', '÷ plain conv', 'share of whole'], part_rows)
    print('### Per-sample grouped conv ÷ dense conv of the same size (forward + backward)\n')
    print_table(['batch', 'variant', 'median ms', '÷ dense conv with the same gradients'], grouped_rows)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        torch.manual_seed(0)
        b, c, s, d = batches[-1], args.feat, args.size, args.prompt_dim
        dcm = DynamicCorrelationModule(c, d, kernel_size=args.kernel, bank='compact').to(device)
        x = torch.randn(b, c, s, s, device=device, requires_grad=True)
        prompt = torch.randn(b, d, device=device)
        run = step(lambda: dcm(x, prompt), x, *dcm.parameters())
        run()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
        with profile(activities=activities) as prof:
            for _ in range(max(1, reps // 2)):
                run()
        sort = 'cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
        print(f'### torch.profiler, compact DCM forward + backward (batch {b})\n')
        print('```\n' + prof.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=40) + '\n```\n')


if __name__ == '__main__':
    common.run_benchmark(main)
