"""scripts/gpu_check.py with --device cpu --quick: every step of the GPU check, on the CPU, as CI runs it."""

import re
import subprocess
import sys

import pytest
from test_training import tiny_options

from conftest import REPO_ROOT
from pdnsr.tools.experiments.runs import launch

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


def test_torchrun_with_one_process_is_a_distributed_run(paired_data, tmp_path):
    """What the GPU check runs on a one-GPU machine: torchrun with one process (here gloo), so the process group, the
    DDP wrapper and the distributed validation are exercised; validation during and after training."""
    opt = tiny_options(paired_data, 'one', total_iter=4)
    opt['train']['ema_decay'] = 0  # the shipped recipes' setting: validation through net_g
    opt['val']['val_freq'] = 2
    result = launch(opt, str(tmp_path), nproc=1, port=29662, threads=1, timeout=300, launcher='torchrun')
    log = open(result.log_path, encoding='utf-8').read()
    assert result.returncode == 0, log[-3000:]
    assert re.search(r'^\s*dist: True$', log, re.M) and re.search(r'^\s*world_size: 1$', log, re.M), log[-3000:]
    assert log.count('Validation tinyval') == 3, log[-3000:]  # iterations 2 and 4, and after training
    with pytest.raises(ValueError, match="launcher must be None or 'torchrun', got 'mpirun'"):
        launch(opt, str(tmp_path), launcher='mpirun')
