"""Helpers shared by the benchmark scripts: arguments, interleaved median timing, markdown tables, header line,
the work folder and the entry point (:func:`run_benchmark`: a user error is one line on stderr, as in pdnsr's
commands).

Timing rule (one implementation for every script): warm every candidate up, then run them interleaved
(A B A B ...) ``reps`` times and report the median of each. Interleaving matters on a shared machine: a burst of
load from another process slows A and B alike instead of only whichever ran during the burst, so ratios of
medians are far steadier than ratios of separately taken timings. On CUDA every sample is timed with CUDA events
around the call, after ``torch.cuda.synchronize()``.
"""

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The project machines' small data sets; a user's clone has none (a benchmark that needs them prints SKIPPED, exit 0).
SHARED_DATA = Path(os.environ.get('PDNSR_SHARED_DATA') or REPO_ROOT.parent / 'shared' / 'data')
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

import pdnsr  # noqa: E402,F401  (before basicsr: applies the compat patches and registers the archs)
from pdnsr.errors import UserError, run_main  # noqa: E402
from pdnsr.utils.markdown import markdown_table  # noqa: E402  (the benchmarks' tables)


def make_parser(description, reps=None, only=None):
    """ArgumentParser with the options every benchmark takes: --device, --quick, --threads, --reps (``reps``: its
    default, 1 with --quick; :func:`setup` fills it in) and, given the names ``only``, --only (a set of them)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    parser.add_argument(
        '--quick', action='store_true', help='tiny sizes and one repetition: a smoke run, not a measurement'
    )
    parser.add_argument('--threads', type=int, default=2, help='torch.set_num_threads on CPU (default 2)')
    parser.add_argument(
        '--reps', type=int, default=None, help=f'timed repetitions per candidate (median reported; default {reps})'
    )
    parser.set_defaults(default_reps=reps)
    if only:
        names = ','.join(only)
        parser.add_argument('--only', type=lambda text: set(filter(None, text.split(','))), default=set(),
                            help=f'comma-separated subset of {names}')  # fmt: skip
    return parser


def setup(args):
    """Apply --threads, check --device, fill in --reps; returns the torch.device."""
    if args.reps is None and args.default_reps is not None:
        args.reps = 1 if args.quick else args.default_reps
    torch.set_num_threads(args.threads)
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: no CUDA device is available here; use --device cpu')
    return torch.device(args.device)


def command_line():
    """The command that produced the output, as a user would type it from the repository root."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO_ROOT)
    return ' '.join(['.venv/bin/python', shlex.quote(script), *map(shlex.quote, sys.argv[1:])])


def header(device):
    """One line naming what the numbers were measured on."""
    dev = torch.device(device)
    if dev.type == 'cuda':
        where = f'cuda: {torch.cuda.get_device_name(dev)}'
    else:
        where = f'cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores'
    load = ''
    if dev.type == 'cpu' and hasattr(os, 'getloadavg'):
        load = f', load average {os.getloadavg()[0]:.1f} at start (other processes share the cores)'
    return f'torch {torch.__version__}, threads {torch.get_num_threads()}, device {where}{load}'


def print_header(device, title):
    print(f'## {title}\n')
    print(f'command: `{command_line()}`  ')
    print(f'{header(device)}\n')


def sync(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def _time_once(fn, device):
    if torch.device(device).type == 'cuda':
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_interleaved(fns, device='cpu', reps=5, warmup=1):
    """Median seconds of each callable in ``fns`` ({name: fn}), timed interleaved A B A B ... after warm-up.

    Returns {name: (median_s, all_samples)}.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    samples = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            samples[name].append(_time_once(fn, device))
    return {name: (statistics.median(s), s) for name, s in samples.items()}


def paired_ratio(samples_a, samples_b):
    """Median over interleaved rounds of A_i / B_i: robust to load that drifts slowly across rounds."""
    return statistics.median(a / b for a, b in zip(samples_a, samples_b))


def min_ratio(samples_a, samples_b):
    """min(A) / min(B): the least-disturbed estimate on a loaded machine (each minimum is its quietest run)."""
    return min(samples_a) / min(samples_b)


def spread(samples):
    """'min–max' of a list of seconds in ms, to show how noisy a median is."""
    return f'{min(samples) * 1e3:.1f}–{max(samples) * 1e3:.1f}'


def print_table(headers, rows):
    print(markdown_table(headers, rows) + '\n')


def mean_std(values, digits):
    """'mean ± std' of ``values`` (the value alone when there is one) with ``digits`` decimals."""
    if len(values) == 1:
        return f'{values[0]:.{digits}f}'
    return f'{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}'


def fwd_bwd(net, inputs, grad_out=None):
    """Closure running forward + backward of ``net(*inputs)`` against a fixed output gradient (grads zeroed)."""
    state = {'grad': grad_out}

    def step():
        net.zero_grad(set_to_none=True)
        for t in inputs:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                t.grad = None
        out = net(*inputs)
        if state['grad'] is None:
            state['grad'] = torch.randn_like(out)
        out.backward(state['grad'])

    return step


def verdict(value, target, smaller_is_better=True, quick=False):
    if quick:
        return 'n/a (--quick is a smoke run)'
    ok = value <= target if smaller_is_better else value >= target
    return f'{"met" if ok else "MISSED"} (target ≤ {target})'


def images_in(folder):
    """Image paths of ``folder`` in key order (``pdnsr.data.image_files``' rule of what an image is)."""
    from pdnsr.data.image_files import scan_images

    return list(scan_images(folder).values())


def make_workdir(workdir, default_name):
    """The absolute path of ``--workdir`` (``workdir``; None: ``/tmp/<default_name>_<pid>``), made if missing.

    Raises:
        UserError: ``workdir`` exists and is not a folder.
    """
    path = os.path.abspath(workdir or os.path.join('/tmp', f'{default_name}_{os.getpid()}'))
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f'--workdir {workdir} exists and is not a folder: pass a folder (made if missing)')
    os.makedirs(path, exist_ok=True)
    return path


def run_benchmark(main):
    """The entry point of a benchmark script: ``main()``, then exit. As for pdnsr's commands
    (:func:`pdnsr.errors.run_main`), a user error -- a bad option, a missing or corrupt file, unavailable CLIP weights
    -- is one line on stderr naming it, exit status 2 (``PDNSR_DEBUG=1`` shows the traceback); a failed training run
    prints its log's tail, exit status 1."""
    raise SystemExit(run_main(main, os.path.basename(sys.argv[0])))
