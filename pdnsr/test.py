"""Test with basicsr's pipeline: SR images and a PSNR/SSIM table (``results/<name>/metrics.md``).

python pdnsr/test.py -opt options/test_rcan_x4.yml
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if __name__ == '__main__' and sys.path and os.path.abspath(sys.path[0]) == _HERE:
    # `python pdnsr/train.py` puts pdnsr/ itself on the path (its modules would shadow top-level names such as
    # `test`); put the repository root there instead, so a plain checkout runs without installing.
    sys.path[0] = os.path.dirname(_HERE)

import pdnsr  # noqa: E402,F401
from pdnsr.cli import run_main  # noqa: E402
from pdnsr.paths import root_path  # noqa: E402


def main():
    from basicsr.test import test_pipeline

    run_main(lambda: test_pipeline(root_path()), 'pdnsr-test')


if __name__ == '__main__':
    main()
