"""What the prepare_*.py scripts share: run one ``pdnsr-prepare`` command from this checkout, installed or not."""

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_command(name):
    """Run ``pdnsr-prepare NAME`` on this process's arguments, named after the script in its messages, and exit."""
    if REPO_ROOT not in sys.path:  # this checkout's pdnsr, even where another one is installed
        sys.path.insert(0, REPO_ROOT)
    from pdnsr.tools.prepare.cli import script_main

    sys.exit(script_main(name))
