"""The demo: EDSR vs EDSR+ on photos whose LR versions carry one of two blurs, captions naming the blur (CPU, ~2 min).

    python scripts/demo.py [--quick] [--output demo_output] [--iters N] [--seed S] [--clip-pretrained TAG_OR_FILE]

``pdnsr.demo.main`` (also installed as ``pdnsr-demo``); see docs/demo.md.
"""

import os
import sys

try:
    import pdnsr  # noqa: F401  (applies the basicsr compatibility patches)
except ImportError:
    # Run from a checkout that was not pip-installed.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import pdnsr  # noqa: F401

from pdnsr.demo import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main(prog=os.path.basename(sys.argv[0])))
