"""What the scripts in this folder share: this checkout's pdnsr, importable whether it is pip-installed or not, with
the basicsr compatibility patches applied (``import pdnsr`` does that) before anything imports basicsr."""

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # this checkout's pdnsr, even where another one is installed
    sys.path.insert(0, REPO_ROOT)

import pdnsr  # noqa: E402,F401
