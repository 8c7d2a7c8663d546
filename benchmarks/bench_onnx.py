"""onnxruntime ÷ PyTorch inference time of EDSR+ and RCAN+ graphs, two-input and baked, batch 1, CPU.

Sizes (the issue's): the default networks (EDSR+: 64 features, 16 blocks; RCAN+: 10 groups x 20 blocks, 3 DCMs per
group), x4, prompt_dim 512, a 128 x 128 LR image, batch 1. Random weights (nothing trained is shipped) with every
DCM's kernels scaled up and its router perturbed, so that the DCMs change the output. PyTorch runs
``pdnsr.inference.super_resolve`` (eval, no autograd: the DCMs' prompt-mixed kernels are cached across calls, as for
tiles) with the compact bank, the layout the graphs are exported from; onnxruntime runs the exported graph (CPU
provider, default graph optimisations). Both use ``--threads`` threads and are timed interleaved
(``benchmarks/common.py``). Graphs: ``two-input`` (the prompt an input; the DCM as unfold + MatMul, the default),
``two-input stacked`` (the DCM as one convolution with the n bank kernels stacked, then the pi-weighted sum) and
``baked`` (one prompt folded in: plain convolutions). Each graph's output is also compared with PyTorch's.

``--profile`` adds where onnxruntime spends its time in each graph (its profiler, by operator type).

    .venv/bin/python benchmarks/bench_onnx.py [--quick] [--only edsr,rcan] [--size 128] [--reps 5] [--profile]
"""

import collections
import json
import os
import tempfile

import common

# isort: split
import torch

from pdnsr.archs import EDSRPlus, RCANPlus, dcm_modules
from pdnsr.inference import super_resolve
from pdnsr.tools.export.onnx import OnnxNetwork, export_onnx

TARGET = 1.0
# (key, label, class, arguments)
NETWORKS = [
    ('edsr', 'EDSR+ (64 feat, 16 blocks)', EDSRPlus, dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16)),
    ('rcan', 'RCAN+ (10 groups x 20 blocks)', RCANPlus, dict(num_in_ch=3, num_out_ch=3)),
]
QUICK = [
    ('edsr', 'EDSR+ (quick: 8 feat, 2 blocks)', EDSRPlus, dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=2)),
    (
        'rcan',
        'RCAN+ (quick: 1 group x 3 blocks, 8 feat)',
        RCANPlus,
        dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_group=1, num_block=3, squeeze_factor=4),
    ),
]
# (label, formulation of the two-input DCM, prompt baked in)
GRAPHS = [('two-input', 'unfold', False), ('two-input stacked', 'stacked', False), ('baked', 'unfold', True)]


def build(cls, kwargs, scale, prompt_dim):
    torch.manual_seed(0)
    net = cls(upscale=scale, prompt_dim=prompt_dim, dcm=dict(bank='compact'), **kwargs).eval()
    for dcm in dcm_modules(net):  # DCMs that matter (untrained ones are close to a zero residual)
        dcm.reset_parameters(init_scale=1.0)
        dcm.set_temperature(1.0)
        with torch.no_grad():
            for param in dcm.router.parameters():
                param.add_(torch.randn_like(param))
    return net


def profile(path, feeds, threads, runs=2, top=6):
    """[(operator type, ms per run, share)] of the graph at ``path`` over ``runs`` runs, from onnxruntime's
    profiler (its largest ``top`` operator types)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = os.path.splitext(path)[0]
    sess = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    for _ in range(runs):
        sess.run(None, feeds)
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    by_op = collections.Counter()
    for event in events:
        if event.get('cat') == 'Node' and event['name'].endswith('_kernel_time'):
            by_op[event['args']['op_name']] += event['dur']
    total = sum(by_op.values())
    return [(op, us / 1e3 / runs, us / total) for op, us in by_op.most_common(top)]


def main():
    parser = common.make_parser(__doc__.splitlines()[0], reps=5, only=('edsr', 'rcan'))
    parser.add_argument('--size', type=int, default=128, help='side of the LR image (default 128)')
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--profile', action='store_true', help="onnxruntime's time by operator type, per graph")
    args = parser.parse_args()
    prompt_dim = 512
    if args.quick:
        args.size, prompt_dim = 16, 16
    device = common.setup(args)
    if device.type != 'cpu':
        parser.error('bench_onnx measures the CPU (onnxruntime CPU provider); use --device cpu')

    common.print_header(
        device,
        f'onnxruntime ÷ PyTorch inference, batch 1, {args.size}x{args.size} LR, x{args.scale}, prompt_dim '
        f'{prompt_dim}, {args.reps} interleaved rounds',
    )
    gen = torch.Generator().manual_seed(0)
    lq = torch.rand(1, 3, args.size, args.size, generator=gen)
    prompt = torch.randn(1, prompt_dim, generator=gen)
    prompt /= prompt.norm()
    rows, profiles = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for key, label, cls, kwargs in QUICK if args.quick else NETWORKS:
            if args.only and key not in args.only:
                continue
            net = build(cls, kwargs, args.scale, prompt_dim)
            want = super_resolve(net, lq, prompt)
            steps = {'torch': lambda net=net: super_resolve(net, lq, prompt)}
            errors = {}
            for graph, form, baked in GRAPHS:
                path = os.path.join(tmp, f'{key}_{graph.replace(" ", "_")}.onnx')
                export_onnx(net, path, prompt=prompt if baked else None, form=form)
                onnx_net = OnnxNetwork(path, threads=args.threads)
                given = None if baked else prompt
                errors[graph] = float((super_resolve(onnx_net, lq, given) - want).abs().max())
                steps[graph] = lambda onnx_net=onnx_net, given=given: super_resolve(onnx_net, lq, given)
                if args.profile:
                    feeds = {'image': lq.numpy(), **({} if baked else {'prompt': prompt.numpy()})}
                    for op, ms, share in profile(path, feeds, args.threads):
                        profiles.append([label, graph, op, f'{ms:.1f}', f'{share:.0%}'])
            res = common.time_interleaved(steps, device, reps=args.reps)
            t_torch, s_torch = res['torch']
            for graph, *_ in GRAPHS:
                t_ort, s_ort = res[graph]
                ratio = common.paired_ratio(s_ort, s_torch)
                rows.append(
                    [
                        label,
                        graph,
                        f'{t_torch * 1e3:.0f}',
                        f'{t_ort * 1e3:.0f}',
                        common.spread(s_torch),
                        common.spread(s_ort),
                        f'{ratio:.3f}',
                        f'{common.min_ratio(s_ort, s_torch):.3f}',
                        f'{errors[graph]:.1e}',
                        common.verdict(ratio, TARGET, quick=args.quick),
                    ]
                )
            print(f'  measured {label}')
    print()
    common.print_table(
        [
            'network',
            'graph',
            'PyTorch ms',
            'onnxruntime ms',
            'PyTorch min–max',
            'onnxruntime min–max',
            'onnxruntime ÷ PyTorch (median of per-round ratios)',
            'min ÷ min',
            'max abs error vs PyTorch',
            'target (on per-round ratio)',
        ],
        rows,
    )
    if profiles:
        print('onnxruntime profile, mean of 2 runs (the largest operator types; share of the time in operators):\n')
        common.print_table(['network', 'graph', 'operator', 'ms', 'share'], profiles)


if __name__ == '__main__':
    common.run_benchmark(main)
