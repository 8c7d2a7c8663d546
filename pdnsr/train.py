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

from pdnsr.errors import run_main  # noqa: E402  (importing pdnsr registers everything and applies compat)


def run_pipeline(kind):
    """``pdnsr-train`` / ``pdnsr-test``: basicsr's train or test pipeline (``kind``) on this process's command line,
    with pdnsr registered and ``experiments/``, ``results/``, ``tb_logger/`` under
    :func:`pdnsr.paths.root_path`; returns the exit status.

    Before basicsr creates, or archives, any folder: every check of the options and data
    (:func:`pdnsr.models.run_checks.preflight`), then the run's lock on its folder (:func:`pdnsr.paths.run_lock`:
    a second run of the same name is refused, never let in to rename or write into the first one's folder).
    """
    import importlib

    from pdnsr.models.run_checks import preflight
    from pdnsr.paths import root_path, run_lock

    pipeline = getattr(importlib.import_module(f'basicsr.{kind}'), f'{kind}_pipeline')

    def body():
        opt = preflight(kind)
        with run_lock(opt):
            return pipeline(root_path())

    return run_main(body, f'pdnsr-{kind}')


def main():
    return run_pipeline('train')


if __name__ == '__main__':
    sys.exit(main())
