"""How every command-line entry point reports its outcome: the one home of the exit-status rule.

``sys.exit(run_main(main_body, 'pdnsr-infer'))``: a user error (:data:`USER_ERRORS`: bad option, path, weights,
prompt store, registry name...) becomes one line ``prog: error: message`` on stderr and exit status 2, the status
argparse uses for usage errors (whose own ``SystemExit`` is passed through as a status); a failed training run
(:class:`~pdnsr.experiments.runs.RunFailed`) is exit status 1 with its log's tail; Ctrl-C is 130; anything else is a
bug and keeps its traceback. ``PDNSR_DEBUG=1`` re-raises user errors too.
"""

import os
import sys

from pdnsr.errors import USER_ERRORS, UserError, one_line
from pdnsr.experiments.runs import RunFailed


def run_main(fn, prog):
    """Call ``fn()`` with stdout line-buffered and return the process exit status; never raises for a user error.

    Args:
        fn (callable): the entry point's body; returns an exit status (None means 0). It may parse arguments:
            argparse's ``SystemExit`` (usage error, ``--help``) becomes its status.
        prog (str): the command name that starts the error line.

    Returns:
        int: ``fn``'s status; 2 for a user error; 1 for a failed run; 130 for Ctrl-C.
    """
    if hasattr(sys.stdout, 'reconfigure'):  # progress lines as they come, also through a pipe or from threads
        sys.stdout.reconfigure(line_buffering=True)
    try:
        status = fn()
    except SystemExit as err:
        if err.code is None or isinstance(err.code, int):
            return err.code or 0
        print(err.code, file=sys.stderr)  # sys.exit('message'): what the interpreter would do
        return 1
    except RunFailed as err:  # its message ends with the run's log tail: printed as lines, not folded into one
        print(f'{prog}: {err}', file=sys.stderr)
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


def check_output_folder(out_dir, flag='--output'):
    """Fail now, not after the work, when ``out_dir`` cannot be created or written; creates nothing.

    Raises:
        UserError: ``out_dir`` (or the nearest of its parents that exists) is not a writable folder.
    """
    path = os.path.abspath(out_dir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise UserError(f'{flag} {out_dir}: {path} exists and is not a folder; choose another {flag}')
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f'{flag} {out_dir}: {path} is not writable; choose another {flag}')


def add_clip_arguments(parser, pretrained='openai', for_model=False):
    """``--clip-model`` and ``--clip-pretrained`` (default ``pretrained``), spelled alike by every command that
    encodes prompts; ``parser`` may be an argument group.

    ``for_model``: the command encodes prompts for a trained model: both default to the encoder its checkpoint
    records (:func:`pdnsr.inference.prompt_encoder_for`), and ``--force-encoder`` lets another one through.
    """
    default = 'the encoder the checkpoint records' if for_model else None
    parser.add_argument(
        '--clip-model',
        default=None if for_model else 'ViT-B-32',
        help=f'open_clip architecture (default {default or "ViT-B-32"})',
    )
    parser.add_argument(
        '--clip-pretrained',
        default=None if for_model else pretrained,
        help=f"open_clip pretrained tag, a local checkpoint file, or 'none' for random weights (tests only); "
        f'default {default or pretrained}',
    )
    if for_model:
        parser.add_argument(
            '--force-encoder',
            action='store_true',
            help='use --clip-model / --clip-pretrained even when the checkpoint records another encoder (warns)',
        )


def add_view_argument(parser, flag='--view', what='the image', default='flip'):
    """``flag``: the image view CLIP encodes (:data:`pdnsr.prompts.encoder.VIEWS`; ``flip`` is the paper's default);
    ``default`` None: the view the model's checkpoint records, else flip."""
    from pdnsr.prompts.encoder import VIEWS

    parser.add_argument(
        flag,
        choices=VIEWS,
        default=default,
        help=f'view of {what} that CLIP encodes: flip (horizontally flipped, as in training) or identity; default '
        + ('the view of the training prompts the checkpoint records, else flip' if default is None else default),
    )
