"""A user's clone has no ``../shared``: with the shared data hidden (``PDNSR_SHARED_DATA`` pointing at nothing),
every test that reads it skips with the reason, and every benchmark that needs it prints a skip line and exits 0."""

import os
import subprocess
import sys

import commands

from conftest import REPO_ROOT

PYTHON = sys.executable
DATA_BENCHMARKS = ('bench_quality.py', 'bench_prompt_information.py')


def hidden(tmp_path):
    return dict(os.environ, PDNSR_SHARED_DATA=str(tmp_path / 'no_shared_data'), OMP_NUM_THREADS='1')


def test_tests_that_read_the_shared_data_skip_with_the_reason(tmp_path):
    proc = subprocess.run(
        [PYTHON, '-m', 'pytest', '-q', '-rs', '-m', 'shared', '-p', 'no:cacheprovider', str(REPO_ROOT / 'tests')],
        cwd=REPO_ROOT, env=hidden(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    skipped = [line for line in proc.stdout.splitlines() if line.startswith('SKIPPED')]
    assert proc.returncode == 0 and ' passed' not in proc.stdout.splitlines()[-1], proc.stdout[-3000:]
    assert len(skipped) >= 4 and all('no_shared_data' in line for line in skipped), proc.stdout[-3000:]


def test_benchmarks_that_need_the_shared_data_skip_and_exit_0(tmp_path):
    for script in DATA_BENCHMARKS:
        argv = [PYTHON, str(REPO_ROOT / 'benchmarks' / script), '--quick', '--workdir', str(tmp_path / script)]
        proc = commands.run(argv, cwd=REPO_ROOT, env=hidden(tmp_path), timeout=300)
        assert proc.returncode == 0 and 'Traceback' not in proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert 'SKIPPED: data not found' in proc.stdout and 'no_shared_data' in proc.stdout, proc.stdout[-2000:]
