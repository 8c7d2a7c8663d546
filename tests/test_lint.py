"""The code base passes the one linter/formatter configured in pyproject.toml (ruff), so style never drifts."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


def _ruff():
    # The ruff of the environment running the tests first (bootstrap.sh installs it there), then any on PATH.
    exe = shutil.which('ruff', path=os.path.dirname(sys.executable)) or shutil.which('ruff')
    if exe is None:
        try:
            import ruff  # noqa: F401
        except ImportError:
            pytest.skip('ruff is not installed (pip install -e ".[test]")')
        return [sys.executable, '-m', 'ruff']
    return [exe]


@pytest.mark.parametrize('args', [['check', '.'], ['format', '--check', '.']], ids=['check', 'format'])
def test_ruff(args):
    proc = subprocess.run(_ruff() + args, cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
