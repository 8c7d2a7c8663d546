"""Training step time of PDNModel: eager float32 against channels_last, bf16 / fp16 autocast and torch.compile.

One full ``PDNModel.optimize_parameters`` (forward, L1 loss, backward, Adam step) on a fixed batch, for each
``train:`` speed option of :mod:`pdnsr.models.train_options`, timed interleaved (benchmarks/common.py) after a
warm-up that includes compiling. The model is built from an option dict as the training pipeline builds it, on a
small real dataset with a prompt store from the random-weight CLIP (the data only feeds the option checks: the timed
batch is fixed).

    .venv/bin/python benchmarks/bench_train_step.py [--device cuda] [--networks edsr rcan] [--batch 16]

Ratios to eager float32 are given as median ÷ median, as the median of per-round ratios (the one the targets are
judged on: compiled ÷ eager ≤ 1.0 after warm-up; on CUDA bf16 + channels_last ÷ float32 ≤ 0.6) and as min ÷ min.
``--quick`` (a smoke run) compiles only once.
"""

import tempfile
import time

import common

# isort: split
import torch

from pdnsr import options as opts
from pdnsr.models.pdn_model import build_in_process
from pdnsr.prompts.encoder import PromptEncoder
from pdnsr.tools.sample_data import sample_dataset

NETWORKS = {  # (type, arguments): the paper's sizes on CUDA, smaller on the CPU
    'edsr': ('EDSRPlus', dict(num_feat=64, num_block=16), dict(num_feat=64, num_block=4)),
    'rcan': ('RCANPlus', dict(num_group=10, num_block=20), dict(num_group=2, num_block=4)),
}
CONFIGS = {  # label: (--configs name, train: options)
    'eager float32': ('fp32', {}),
    'channels_last': ('cl', dict(channels_last=True)),
    'bf16': ('bf16', dict(amp='bf16')),
    'bf16 + channels_last': ('bf16-cl', dict(amp='bf16', channels_last=True)),
    'fp16 (GradScaler)': ('fp16', dict(amp='fp16')),
    'compiled': ('compile', dict(compile=True)),
    'compiled, bf16 + channels_last': ('compile-bf16-cl', dict(compile=True, amp='bf16', channels_last=True)),
}


def model(net, data, device, batch, speed):
    net_type, cuda_args, cpu_args = NETWORKS[net]
    network_g = opts.network(net_type, 2, **(cuda_args if device.type == 'cuda' else cpu_args))
    train_set = opts.train_dataset('bench', data[0], data[1], 96, batch, data[2], prompted=True)
    opt = opts.train_options('bench', network_g, train_set, 2, 1000, 1e-4, num_gpu=int(device.type == 'cuda'))
    opt['train'].update(speed)
    torch.manual_seed(0)
    return build_in_process(opt)


def main():
    parser = common.make_parser(__doc__.splitlines()[0])
    parser.add_argument('--networks', nargs='+', choices=sorted(NETWORKS), default=['edsr', 'rcan'])
    parser.add_argument('--batch', type=int, default=None, help='default 16 on CUDA, 4 on the CPU')
    parser.add_argument('--lr-size', type=int, default=48, help='LR patch side (default 48, the paper recipe)')
    parser.add_argument('--configs', nargs='+', choices=[c[0] for c in CONFIGS.values()], default=None,
                        help='the steps to time (default all; fp32, the baseline, is always timed)')  # fmt: skip
    args = parser.parse_args()
    device = common.setup(args)
    batch = args.batch or (16 if device.type == 'cuda' else 4)
    size, reps, warmup = (args.lr_size, args.reps or 5, 3) if not args.quick else (16, 1, 1)
    chosen = set(args.configs or [c[0] for c in CONFIGS.values()]) | {'fp32'}
    configs = {label: speed for label, (short, speed) in CONFIGS.items() if short in chosen}
    if args.quick:
        batch, args.networks = 2, ['edsr']
        configs.pop('compiled, bf16 + channels_last', None)  # compiling takes a minute or two on a CPU
        for name in NETWORKS:
            NETWORKS[name] = (NETWORKS[name][0], dict(num_feat=16, num_block=1), dict(num_feat=16, num_block=1))
    common.print_header(device, f'PDNModel training step, x2, batch {batch}, {size}x{size} LR patches')
    with tempfile.TemporaryDirectory() as root:
        data = sample_dataset(root, PromptEncoder('ViT-B-32', pretrained='none'), count=2)
        gen = torch.Generator().manual_seed(0)
        step = dict(
            lq=torch.rand(batch, 3, size, size, generator=gen),
            gt=torch.rand(batch, 3, 2 * size, 2 * size, generator=gen),
            prompt=torch.nn.functional.normalize(torch.randn(batch, 512, generator=gen), dim=1),
        )
        rows, timed = [], {}
        for net in args.networks:
            fns, warm = {}, {}
            for label, speed in configs.items():
                m = model(net, data, device, batch, speed)
                m.feed_data(step)
                t0 = time.perf_counter()
                for it in range(1, warmup + 1):
                    m.optimize_parameters(it)
                torch.cuda.synchronize() if device.type == 'cuda' else None
                warm[label] = time.perf_counter() - t0
                fns[label] = lambda m=m: m.optimize_parameters(warmup + 1)
            times = timed[NETWORKS[net][0]] = common.time_interleaved(fns, device, reps=reps, warmup=0)
            base, base_samples = times['eager float32']
            for label, (median, samples) in times.items():
                per_round, least = common.paired_ratio(samples, base_samples), common.min_ratio(samples, base_samples)
                rows.append(
                    [
                        NETWORKS[net][0],
                        label,
                        f'{median * 1e3:.1f}',
                        common.spread(samples),
                        f'{median / base:.2f}',
                        f'{per_round:.2f}',
                        f'{least:.2f}',
                        f'{warm[label]:.1f}',
                    ]
                )
    common.print_table(['network', 'training step', 'median ms', 'min–max ms', '÷ eager float32 (median ÷ median)',
                 '÷ eager float32 (per-round)', 'min ÷ min', f'first {warmup} steps (s)'], rows)  # fmt: skip
    # Verdicts on the per-round ratio; the compiled bf16 + channels_last step is also set against its eager twin.
    checks = (
        ('bf16 + channels_last', 'eager float32', 0.6 if device.type == 'cuda' else None),
        ('compiled', 'eager float32', 1.0),
        ('compiled, bf16 + channels_last', 'bf16 + channels_last', 1.0),
    )
    for net, times in timed.items():
        for label, against, target in checks:
            if label in times and against in times:
                ratio = common.paired_ratio(times[label][1], times[against][1])
                check = (
                    common.verdict(ratio, target, quick=args.quick)
                    if target
                    else 'no target on the CPU (≤ 0.6 on CUDA)'
                )
                print(f'{net}: {label} ÷ {against} = {ratio:.2f} (per-round median): {check}')


if __name__ == '__main__':
    common.run_benchmark(main)
