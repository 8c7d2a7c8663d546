"""Without the deploy extra (onnx, onnxruntime, spandrel), pdnsr imports and runs, and the commands that need it
say in one line how to install it. The packages are hidden from a fresh interpreter by an import hook."""

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

HIDE = """
import sys

class Hidden:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('onnx', 'onnxruntime', 'spandrel'):
            raise ImportError(f'No module named {name!r}')
        return None

sys.meta_path.insert(0, Hidden())
"""


def _run(code, tmp_path):
    return subprocess.run(
        [sys.executable, '-c', HIDE + code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS='1'),
    )  # fmt: skip


@pytest.mark.slow
def test_pdnsr_without_the_deploy_extra(tmp_path):
    code = """
import torch
import pdnsr, pdnsr.tools.export, pdnsr.tools.export.cli, pdnsr.tools.export.standins, pdnsr.tools.infer
from pdnsr.archs import EDSRPlus
from pdnsr.tools.export.standins import ExportModule
net = EDSRPlus(3, 3, num_feat=8, num_block=1, upscale=2, prompt_dim=8).eval()
ExportModule(net)(torch.rand(1, 3, 5, 5), torch.rand(1, 8))  # the stand-ins are torch only
from pdnsr.tools.export.cli import main
from pdnsr.tools.infer import main as infer
codes = [main(['--opt', 'o.yml', '--weights', 'w.pth', '-o', 'x.onnx']),
         main(['--opt', 'o.yml', '--weights', 'w.pth', '-o', 'x.safetensors', '--prompt', 'a']),
         infer(['--onnx', 'x.onnx', '--input', '.', '--output', 'out'])]
print(codes)
"""
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == '[2, 2, 2]'
    lines = [line for line in proc.stderr.splitlines() if ': error:' in line]
    assert len(lines) == 3, proc.stderr[-3000:]
    assert all('pip install pdnsr[deploy]' in line for line in lines), lines
    assert 'onnx package' in lines[0] and 'spandrel package' in lines[1] and 'onnxruntime package' in lines[2]
