"""Every benchmark script runs with ``--quick`` and prints its markdown table and command (values not checked).

The scripts start in parallel subprocesses (one thread each): most of each run is the import of torch / basicsr,
which would otherwise be paid once per script in a row.
"""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

# Every script in a subprocess: minutes in all, so not part of the fast loop (pytest -m 'not slow').
pytestmark = pytest.mark.slow

# script -> (extra arguments, a table header line it must print)
SCRIPTS = {
    'bench_dcm.py': ([], '| batch | variant | median ms |'),
    'bench_networks.py': ([], '| pair | DCM bank | baseline ms |'),
    'bench_memory.py': ([], '| network | params | RSS of model + inputs (MiB) |'),
    'bench_amp.py': ([], '| module | autocast dtype | output finite |'),
    'count_params.py': ([], '| network | DCM bank | params | ÷ baseline | MACs / LR pixel |'),
    'bench_quality.py': ([], '| set | metric | EDSR | EDSR+ |'),
    'bench_prompt_information.py': ([], '| set | degradation | EDSR | full: right | full: swapped |'),
    'bench_tiling.py': ([], '| network | tile | pad |'),
    'bench_prompt_data.py': ([], '| measurement | value |'),
    'bench_inference_memory.py': ([], '| network | LR input |'),
    'bench_onnx.py': ([], '| network | graph | PyTorch ms | onnxruntime ms |'),
    'bench_train_step.py': ([], '| network | training step | median ms |'),
    'bench_router.py': (['--train', '--mechanisms', 'scaled', 'layernorm'], '| router | Set5 right − EDSR |'),
}
# Scripts that train through pdnsr/train.py on ../shared/data: a work folder each, and a skip when the data is absent.
TRAINS = ('bench_quality.py', 'bench_prompt_information.py', 'bench_router.py')


@pytest.fixture(scope='module')
def quick_runs(tmp_path_factory):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    procs = {}
    for script, (extra, _) in SCRIPTS.items():
        args = [sys.executable, str(REPO_ROOT / 'benchmarks' / script), '--quick', '--threads', '1', *extra]
        if script in TRAINS:
            args += ['--workdir', str(tmp_path_factory.mktemp(script[:-3]))]
        procs[script] = subprocess.Popen(
            args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    results = {}
    for script, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        results[script] = (proc.returncode, out, err)
    return results


@pytest.mark.parametrize('script', sorted(SCRIPTS))
def test_quick_run_prints_table_and_command(quick_runs, script):
    code, out, err = quick_runs[script]
    assert code == 0, out[-2000:] + err[-3000:]
    assert f'ommand: `.venv/bin/python benchmarks/{script} --quick' in out, out[-2000:]
    assert 'torch ' in out and re.search(r'threads 1\b|\b1 threads', out)
    if script in TRAINS and 'SKIPPED: data not found' in out:
        pytest.skip('shared data absent: the quality benchmark printed its skip message')
    assert SCRIPTS[script][1] in out, out[-3000:]
