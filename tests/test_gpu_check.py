"""scripts/gpu_check.py with --device cpu --quick: every step of the GPU check, on the CPU, as CI runs it."""

import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    report = tmp_path / 'report.md'
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / 'scripts' / 'gpu_check.py'),
            '--device',
            'cpu',
            '--quick',
            '--report',
            str(report),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = report.read_text()
    assert text.startswith('# pdnsr GPU check: CPU') and '**all steps passed**' in text
    for run in ('EDSRPlus_fp32', 'EDSRPlus_fp16', 'EDSRPlus_bf16+cl+compile', 'RCANPlus_bf16+cl'):
        assert f'| {run} | ok |' in text, text
    assert 'validations' in text and '| EDSR+ / EDSR' in text and '| batch | variant |' in text
    # torchrun really ran (2 gloo processes), and the step-time ratios of the CUDA targets are in the report.
    assert '`torchrun --nproc_per_node=2` (gloo)' in text and ', distributed (world_size 2)' in text, text
    assert re.search(r'- EDSR\+ bf16 \+ channels_last ÷ float32 \(ms / iteration after warm-up\): \*\*\d', text), text
    assert '| ms / iteration 1–4 (after warm-up) |' in text


def test_gpu_check_without_cuda_is_one_line():
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / 'scripts' / 'gpu_check.py')], capture_output=True, text=True, timeout=300
    )
    if proc.returncode == 0:
        pytest.skip('a CUDA device is present')
    assert proc.returncode == 2 and proc.stderr.strip() == (
        'gpu_check.py: error: --device cuda: no CUDA device here; use --device cpu'
    )
