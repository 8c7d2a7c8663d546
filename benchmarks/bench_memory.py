"""Peak memory of one training step of RCAN+ divided by RCAN's (batch 16, 48 x 48 LR, x4, 64 features).

RCAN+ runs with both DCM kernel banks (``paper``, ``compact``), each in its own process.

Each configuration runs in a fresh subprocess, so one cannot inherit the other's allocator cache. A step is:
forward, L1 loss, backward, Adam step (the first Adam step allocates the optimiser state).

- CPU: peak resident set size (``ru_maxrss``) minus the RSS after imports, before the network is built; so it
  holds parameters, gradients, Adam state, activations and the allocator's slack. The RSS after building the
  network and after the step are printed too.
- CUDA: ``torch.cuda.max_memory_allocated`` over the step (parameters, gradients, Adam state, activations).

Default on CPU is RCAN with 2 residual groups of 20 blocks (3 DCMs per group in RCAN+, the same proportion as
the full model); ``--groups 10`` gives the full model (about 11 GB at batch 16 on CPU).

    .venv/bin/python benchmarks/bench_memory.py [--device cpu|cuda] [--quick] [--groups 10]
"""

import json
import os
import resource
import subprocess
import sys

from common import make_parser, print_header, print_table, run_benchmark, setup, verdict

# isort: split
import torch
import torch.nn.functional as F

CHILDREN = ('RCAN', 'RCANPlus:paper', 'RCANPlus:compact')
TARGET = 1.05  # compact bank; the paper bank's Adam state alone adds about 1.2 M x 3 floats per DCM


def rss_bytes():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def child(args):
    from basicsr.archs.rcan_arch import RCAN

    from pdnsr.archs.rcan_plus_arch import RCANPlus

    device = setup(args)
    torch.manual_seed(0)
    start = rss_bytes()
    kw = dict(
        num_in_ch=3,
        num_out_ch=3,
        num_feat=args.feat,
        num_group=args.groups,
        num_block=args.blocks,
        squeeze_factor=args.squeeze,
        upscale=args.scale,
    )
    plus = args.child != 'RCAN'
    bank = args.child.split(':')[1] if plus else None
    net = (RCANPlus(prompt_dim=args.prompt_dim, dcm=dict(bank=bank), **kw) if plus else RCAN(**kw)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    lq = torch.rand(args.batch, 3, args.size, args.size, device=device)
    gt = torch.rand(args.batch, 3, args.size * args.scale, args.size * args.scale, device=device)
    prompt = torch.randn(args.batch, args.prompt_dim, device=device)
    built = rss_bytes()
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    # Activations autograd keeps for the backward pass, counted exactly (each storage once, parameters excluded):
    # a deterministic companion of the peak, which on CPU also holds the allocator's slack.
    param_storages = {p.untyped_storage().data_ptr() for p in net.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(lq, prompt) if plus else net(lq)
    F.l1_loss(out, gt).backward()
    opt.step()
    result = dict(
        params=sum(p.numel() for p in net.parameters()),
        saved=sum(saved.values()),
        start=start,
        built=built,
        after=rss_bytes(),
        peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
    if device.type == 'cuda':
        torch.cuda.synchronize()
        result['cuda_peak'] = torch.cuda.max_memory_allocated()
        result['device_name'] = torch.cuda.get_device_name()
    print('RESULT ' + json.dumps(result))


def main():
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--size', type=int, default=48)
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--feat', type=int, default=64)
    parser.add_argument('--groups', type=int, default=2)
    parser.add_argument('--blocks', type=int, default=20)
    parser.add_argument('--squeeze', type=int, default=16)
    parser.add_argument('--prompt-dim', type=int, default=512)
    parser.add_argument('--child', choices=CHILDREN, help=argparse_hidden())
    args = parser.parse_args()
    if args.quick:
        args.batch, args.size, args.feat, args.groups, args.blocks = 2, 12, 8, 1, 3
        args.squeeze, args.prompt_dim = 4, 16
    if args.child:
        return child(args)
    device = setup(args)

    results = {}
    for name in CHILDREN:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            '--child',
            name,
            '--device',
            args.device,
            '--threads',
            str(args.threads),
            '--batch',
            str(args.batch),
            '--size',
            str(args.size),
            '--scale',
            str(args.scale),
            '--feat',
            str(args.feat),
            '--groups',
            str(args.groups),
            '--blocks',
            str(args.blocks),
            '--squeeze',
            str(args.squeeze),
            '--prompt-dim',
            str(args.prompt_dim),
        ]
        # Large blocks straight from mmap and back at free: the peak RSS then follows live tensors, not the slack
        # glibc's heap happens to keep (which made repeated CPU runs differ by 10 % and more).
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='131072', MALLOC_TRIM_THRESHOLD_='131072')
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f'{name} child failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}')
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')][-1]
        results[name] = json.loads(line[len('RESULT ') :])

    print_header(
        device,
        f'peak memory of one training step, RCAN+ ÷ RCAN ({args.groups} groups x {args.blocks} '
        f'blocks, {args.feat} feat, batch {args.batch}, {args.size}x{args.size} LR, x{args.scale})',
    )
    mib = 2**20
    if device.type == 'cuda':
        print(f'GPU: {results["RCAN"]["device_name"]}\n')
        key, what = 'cuda_peak', 'torch.cuda.max_memory_allocated'
        peak = {n: r['cuda_peak'] for n, r in results.items()}
    else:
        key, what = 'peak_rss', 'peak RSS − RSS after imports (fresh process each)'
        peak = {n: r['peak_rss'] - r['start'] for n, r in results.items()}
    rows = []
    for name, r in results.items():
        rows.append(
            [
                name.replace(':', ', bank '),
                f'{r["params"] / 1e6:.2f} M',
                f'{(r["built"] - r["start"]) / mib:.0f}',
                f'{peak[name] / mib:.0f}',
                f'{peak[name] / peak["RCAN"]:.3f}',
                f'{r["saved"] / mib:.0f}',
                f'{r["saved"] / results["RCAN"]["saved"]:.3f}',
                verdict(peak[name] / peak['RCAN'], TARGET, quick=args.quick) if name == 'RCANPlus:compact' else '',
            ]
        )
    print(f'peak measured as: {what} ({key})\n')
    print_table(
        [
            'network',
            'params',
            'RSS of model + inputs (MiB)',
            'peak (MiB)',
            '÷ RCAN',
            'saved for backward (MiB)',
            '÷ RCAN',
            'target (on the peak)',
        ],
        rows,
    )


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == '__main__':
    run_benchmark(main)
