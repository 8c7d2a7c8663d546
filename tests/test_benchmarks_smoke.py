"""Every benchmark script runs with ``--quick``, prints its markdown table and its command, and what it measures
holds on the table's numbers (every form of the DCM timed, the compact bank has fewer parameters and
the same multiply-adds, an ONNX graph computes what PyTorch does...).

The scripts run side by side, each in a process of its own (:func:`commands.run`), one thread each.
"""

import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import commands
import pytest

from conftest import REPO_ROOT

# Every script, some of them training: a minute or more in all, so not part of the fast loop (pytest -m 'not slow').
pytestmark = pytest.mark.slow


def rows(out, first):
    """The rows of the table whose first cell starts with ``first``: lists of cells."""
    return [
        [c.strip() for c in line.strip('|').split('|')] for line in out.splitlines() if line.startswith(f'| {first}')
    ]


def number(cell):
    return float(cell.replace(',', '').rstrip('×%').split()[0])


def every_dcm_form_timed(out):
    """The three forms of the DCM (compact, paper, literal), each timed with a positive ratio to the plain conv (which
    is faster is not for one noisy round of tiny sizes to say; the timings live in docs/benchmarks.md)."""
    found = {r[1]: (number(r[2]), number(r[3])) for r in rows(out, '2 | DCM')}
    forms = ('compact bank', 'paper bank', 'literal')
    timed = [v for k, v in found.items() if any(f in k for f in forms)]
    return all(any(f in k for k in found) for f in forms) and all(ms > 0 and ratio > 0 for ms, ratio in timed)


def every_pair_timed_in_both_banks(out):
    """Each of the five networks against its "+" twin in both banks, and min ÷ min is the ratio of the min columns
    (one round of a smoke run is too noisy to say which is faster; the timings live in docs/benchmarks.md)."""
    pairs = [r for r in rows(out, '') if '/' in r[0] and r[1] in ('paper', 'compact')]
    fastest = [(number(r[4].split('–')[0]), number(r[5].split('–')[0]), number(r[8])) for r in pairs]
    consistent = all(base > 0 and plus > 0 and abs(plus / base / ratio - 1) < 0.05 for base, plus, ratio in fastest)
    return len({r[0] for r in pairs}) == 5 and len(pairs) == 10 and consistent


def compact_bank_same_macs_fewer_params(out):
    by_net = {}
    for r in rows(out, ''):
        if r[1] in ('paper', 'compact'):
            by_net.setdefault(r[0], {})[r[1]] = r
    checked = [
        number(b['compact'][2]) < number(b['paper'][2]) and b['compact'][4] == b['paper'][4] for b in by_net.values()
    ]
    return len(checked) >= 3 and all(checked)


def plus_memory_at_least_the_baseline(out):
    plus = rows(out, 'RCANPlus')
    return len(plus) == 2 and all(number(r[4]) >= 1 for r in plus)


def onnx_equals_pytorch(out):
    found = [r for r in rows(out, '') if r[1] in ('two-input', 'two-input stacked', 'baked', 'image-only')]
    return len(found) >= 6 and all(number(r[8]) <= 1e-4 for r in found)


def every_step_timed(out):
    steps = rows(out, 'EDSRPlus')
    return len(steps) >= 4 and all(number(r[2]) > 0 for r in steps)


def scores_are_psnr_and_ssim(out):
    """Every PSNR of the results is a real one (5-60 dB after a few iterations) and every SSIM in (0, 1]."""
    psnr, ssim = [], []
    for r in rows(out, 'Set'):
        if r[1] in ('PSNR (dB)', 'SSIM'):  # bench_quality: a row per metric
            (ssim if r[1] == 'SSIM' else psnr).extend(map(float, r[2:4]))
        for cell in r[2:]:  # bench_prompt_information: "PSNR / SSIM" cells
            found = re.fullmatch(r'([\d.]+) / ([\d.]+)', cell)
            if found:
                psnr.append(float(found[1]))
                ssim.append(float(found[2]))
    return bool(psnr and ssim) and all(5 < v < 60 for v in psnr) and all(0 < v <= 1 for v in ssim)


def page_load_and_click_timed(out):
    """The page's first load, a minimal Gradio page's, the click to all outputs and the handler's part of it: each a
    median in seconds within its min-max, and the handler's time within the click's."""
    measures = ('first page load (', 'first page load of a minimal', 'click to all outputs (', 'of which the page')
    timed = []
    for measure in measures:
        found = rows(out, measure)
        low, high = (number(v) for v in found[0][4].split('–')) if len(found) == 1 else (0, 0)
        timed.append((low, number(found[0][3]) if found else 0, high))
    return all(0 < low <= median <= high for low, median, high in timed) and timed[3][1] <= timed[2][1]


# script -> (a header line of its table, what must hold on the numbers)
SCRIPTS = {
    'bench_dcm.py': ('| batch | variant | median ms |', every_dcm_form_timed),
    'bench_networks.py': ('| pair | DCM bank | baseline ms |', every_pair_timed_in_both_banks),
    'bench_memory.py': ('| network | params | RSS of model + inputs (MiB) |', plus_memory_at_least_the_baseline),
    'count_params.py': (
        '| network | DCM bank | params | ÷ baseline | MACs / LR pixel |',
        compact_bank_same_macs_fewer_params,
    ),
    'bench_onnx.py': ('| network | graph | PyTorch ms | onnxruntime ms |', onnx_equals_pytorch),
    'bench_train_step.py': ('| network | training step | median ms |', every_step_timed),
    'bench_quality.py': ('| set | metric | EDSR | EDSR+ |', scores_are_psnr_and_ssim),
    'bench_prompt_information.py': (
        '| set | degradation | EDSR | full: right | full: swapped |',
        scores_are_psnr_and_ssim,
    ),
    'bench_app.py': ('| measure | target | first s | median s |', page_load_and_click_timed),
}
# Scripts that train through pdnsr/train.py on ../shared/data: a work folder each, and a skip when the data is absent.
TRAINS = ('bench_quality.py', 'bench_prompt_information.py')


@pytest.fixture(scope='module')
def quick_runs(tmp_path_factory):
    env = dict(os.environ, OMP_NUM_THREADS='1')

    def run(script):
        args = [sys.executable, str(REPO_ROOT / 'benchmarks' / script), '--quick', '--threads', '1']
        if script in TRAINS:
            args += ['--workdir', str(tmp_path_factory.mktemp(script[:-3]))]
        return script, commands.run(args, cwd=REPO_ROOT, env=env, timeout=900)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(run, SCRIPTS))


@pytest.mark.parametrize('script', sorted(SCRIPTS))
def test_quick_run_prints_table_and_command(quick_runs, script):
    proc = quick_runs[script]
    out = proc.stdout
    assert proc.returncode == 0, out[-2000:] + proc.stderr[-3000:]
    assert f'ommand: `.venv/bin/python benchmarks/{script} --quick' in out, out[-2000:]
    assert 'torch ' in out and re.search(r'threads 1\b|\b1 threads', out)
    if script in TRAINS and 'SKIPPED: data not found' in out:
        pytest.skip('shared data absent: the benchmark printed its skip message')
    if script == 'bench_app.py' and 'SKIPPED: ' in out:  # no Gradio, Playwright or Chromium here
        pytest.skip(out.split('SKIPPED: ', 1)[1].splitlines()[0])
    header, holds = SCRIPTS[script]
    assert header in out, out[-3000:]
    assert holds(out), f'{holds.__name__} does not hold on:\n{out[-3000:]}'
