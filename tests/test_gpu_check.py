"""scripts/gpu_check.py with --device cpu --quick: every step of the GPU check, on the CPU, as CI runs it."""

import re
import sys

import commands
import pytest

from conftest import REPO_ROOT
from pdnsr.tools.experiments.runs import launch

pytestmark = pytest.mark.slow


def test_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    """The suite's one torchrun run: the GPU check's launch (``torchrun``, gloo here), the shipped recipes' settings
    (ema_decay 0), validation during and after training, attention pictures from the distributed validation."""
    report, work = tmp_path / 'report.md', tmp_path / 'work'
    argv = ['--device', 'cpu', '--quick', '--report', str(report), '--workdir', str(work)]
    proc = commands.run([sys.executable, str(REPO_ROOT / 'scripts' / 'gpu_check.py'), *argv], REPO_ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = report.read_text()
    assert text.startswith('# pdnsr GPU check: CPU') and '**all steps passed**' in text
    for run in ('EDSRPlus_fp32', 'EDSRPlus_bf16+cl', 'RCANPlus_bf16+cl'):
        assert f'| {run} | ok |' in text, text
    assert 'validations' in text and '| EDSR+ / EDSR' in text and '| batch | variant |' in text
    # torchrun really ran (2 gloo processes), and the step-time ratios of the CUDA targets are in the report.
    assert '`torchrun --nproc_per_node=2` (gloo)' in text and ', distributed (world_size 2)' in text, text
    assert re.search(r'- EDSR\+ bf16 \+ channels_last ÷ float32 \(ms / iteration after warm-up\): \*\*\d', text), text
    assert 'compiled bf16 + channels_last ÷ eager bf16 + channels_last: not measured (--quick makes no compiled' in text
    assert '| ms / iteration 1–4 (after warm-up) |' in text
    log = (work / 'ddp_train.log').read_text()
    assert re.search(r'^\s*ema_decay: 0$', log, re.M) and log.count('Validation checkval') == 3, log[-3000:]
    pictures = [p.name for p in (work / 'experiments' / 'ddp' / 'visualization').rglob('*.png')]
    assert any(name.endswith('_attention_dcm0.png') for name in pictures), pictures


def test_launch_knows_its_launchers(tmp_path):
    with pytest.raises(ValueError, match="launcher must be None or 'torchrun', got 'mpirun'"):
        launch({'name': 'x'}, str(tmp_path), launcher='mpirun')


def test_gpu_check_without_cuda_is_one_line():
    proc = commands.run([sys.executable, str(REPO_ROOT / 'scripts' / 'gpu_check.py')])
    if proc.returncode == 0:
        pytest.skip('a CUDA device is present')
    assert proc.returncode == 2 and proc.stderr.strip() == (
        'gpu_check.py: error: --device cuda: no CUDA device here; use --device cpu'
    )
