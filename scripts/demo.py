"""The demo: EDSR vs EDSR+ on photos whose LR versions carry one of two blurs, captions naming the blur (CPU, ~2 min).

    python scripts/demo.py [--quick] [--output demo_output] [--iters N] [--seed S] [--clip-pretrained TAG_OR_FILE]

``pdnsr.tools.demo.main`` (also installed as ``pdnsr-demo``); see docs/demo.md.
"""

import os
import sys

import _checkout  # noqa: F401  (this checkout's pdnsr, basicsr patched)

# isort: split

from pdnsr.tools.demo import main

if __name__ == '__main__':
    sys.exit(main(prog=os.path.basename(sys.argv[0])))
