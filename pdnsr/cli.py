"""How every command-line entry point reports its outcome: the one home of the exit-status rule.

``sys.exit(run_main(main_body, 'pdnsr-infer'))``: a user error (:data:`USER_ERRORS`: bad option, path, weights,
prompt store, registry name...) becomes one line ``prog: error: message`` on stderr and exit status 2, the status
argparse uses for usage errors (whose own ``SystemExit`` is passed through as a status); Ctrl-C is 130; anything
else is a bug and keeps its traceback. ``PDNSR_DEBUG=1`` re-raises user errors too.
"""

import os
import sys

from pdnsr.errors import USER_ERRORS, one_line


def run_main(fn, prog):
    """Call ``fn()`` and return the process exit status; never raises for a user error.

    Args:
        fn (callable): the entry point's body; returns an exit status (None means 0). It may parse arguments:
            argparse's ``SystemExit`` (usage error, ``--help``) becomes its status.
        prog (str): the command name that starts the error line.

    Returns:
        int: ``fn``'s status; 2 for a user error; 130 for Ctrl-C.
    """
    try:
        status = fn()
    except SystemExit as err:
        if err.code is None or isinstance(err.code, int):
            return err.code or 0
        print(err.code, file=sys.stderr)  # sys.exit('message'): what the interpreter would do
        return 1
    except USER_ERRORS as err:
        if os.environ.get('PDNSR_DEBUG'):
            raise
        print(f'{prog}: error: {one_line(err)} (PDNSR_DEBUG=1 shows the traceback)', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr)
        return 130
    return 0 if status is None else int(status)


def run_pipeline(kind):
    """``pdnsr-train`` / ``pdnsr-test``: basicsr's train or test pipeline (``kind``), with pdnsr registered and
    ``experiments/``, ``results/``, ``tb_logger/`` under :func:`pdnsr.paths.root_path`; returns the exit status."""
    import importlib

    from pdnsr.models.run_checks import preflight
    from pdnsr.paths import root_path

    pipeline = getattr(importlib.import_module(f'basicsr.{kind}'), f'{kind}_pipeline')

    def body():
        preflight(kind)  # before basicsr creates or renames any folder
        return pipeline(root_path())

    return run_main(body, f'pdnsr-{kind}')


def add_clip_arguments(parser, pretrained='openai'):
    """``--clip-model`` and ``--clip-pretrained`` (default ``pretrained``), spelled alike by every command that
    encodes prompts; ``parser`` may be an argument group."""
    parser.add_argument('--clip-model', default='ViT-B-32', help='open_clip architecture (default ViT-B-32)')
    parser.add_argument(
        '--clip-pretrained',
        default=pretrained,
        help=f"open_clip pretrained tag, a local checkpoint file, or 'none' for random weights (tests only); "
        f'default {pretrained}',
    )


def add_view_argument(parser, flag='--view', what='the image'):
    """``flag``: the image view CLIP encodes (:data:`pdnsr.prompts.encoder.VIEWS`; ``flip`` is the paper's default)."""
    from pdnsr.prompts.encoder import VIEWS

    parser.add_argument(
        flag,
        choices=VIEWS,
        default=VIEWS[0],
        help=f'view of {what} that CLIP encodes: flip (horizontally flipped, the default, as in training) or identity',
    )
