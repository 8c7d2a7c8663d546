"""Test with basicsr's pipeline: SR images and a PSNR/SSIM table (``results/<name>/metrics.md``).

    python pdnsr/test.py -opt options/test_rcan_x4.yml

Runs from a plain checkout like ``pdnsr/train.py`` (see the path note there), or as ``pdnsr-test``.
"""

import os
import sys

if __name__ == '__main__' and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = os.path.dirname(sys.path[0])  # the repository root, not pdnsr/ (see pdnsr/train.py)

from pdnsr.train import run_pipeline  # noqa: E402


def main():
    return run_pipeline('test')


if __name__ == '__main__':
    sys.exit(main())
