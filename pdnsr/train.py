"""Train with basicsr's pipeline and pdnsr's networks, datasets and model registered.

    python pdnsr/train.py -opt options/train_rcan_x4.yml [--auto_resume]
    torchrun --nproc_per_node=4 pdnsr/train.py -opt options/train_rcan_x4.yml --launcher pytorch

``experiments/``, ``tb_logger/`` and ``results/`` land under the repository root (or the current directory when
pdnsr is installed without a checkout, through the ``pdnsr-train`` command).
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if __name__ == '__main__' and sys.path and os.path.abspath(sys.path[0]) == _HERE:
    # `python pdnsr/train.py` puts pdnsr/ itself on the path (its modules would shadow top-level names such as
    # `test`); put the repository root there instead, so a plain checkout runs without installing.
    sys.path[0] = os.path.dirname(_HERE)

import pdnsr  # noqa: E402,F401  (registers everything and applies the basicsr compat patches)
from pdnsr.cli import run_main  # noqa: E402
from pdnsr.paths import root_path  # noqa: E402


def main():
    from basicsr.train import train_pipeline

    run_main(lambda: train_pipeline(root_path()), 'pdnsr-train')


if __name__ == '__main__':
    main()
