"""Train with basicsr's pipeline and pdnsr's networks, datasets and model registered.

    python pdnsr/train.py -opt options/train_rcan_x4.yml [--auto_resume]
    torchrun --nproc_per_node=4 pdnsr/train.py -opt options/train_rcan_x4.yml --launcher pytorch

``experiments/``, ``tb_logger/`` and ``results/`` land under the repository root (or the current directory when
pdnsr is installed without a checkout, through the ``pdnsr-train`` command).
"""

import os
import sys

if __name__ == '__main__' and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    # `python pdnsr/train.py` puts pdnsr/ itself on the path (its modules would shadow top-level names such as
    # `test`); put the repository root there instead, so a plain checkout runs without installing.
    sys.path[0] = os.path.dirname(sys.path[0])

from pdnsr.cli import run_pipeline  # noqa: E402  (importing pdnsr registers everything and applies compat)


def main():
    return run_pipeline('train')


if __name__ == '__main__':
    sys.exit(main())
