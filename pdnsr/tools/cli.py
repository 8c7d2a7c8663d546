"""What the command lines share: argument spellings, and the checks of their output paths before any work.

The exit-status rule of every command is :func:`pdnsr.errors.run_main`.
"""

import os

from pdnsr.errors import UserError


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


def _within(path, folder):
    """True when ``path`` is ``folder`` or lies inside it (both resolved)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_apart(output, flag, reads=None, refers=None):
    """Refuse, before any work, an output that would write over, into or delete what the command reads.

    Args:
        output (str): the output folder or file.
        flag (str): its option, for the message (``--output``).
        reads (dict | None): ``{option: path}`` of the inputs of the kind the command writes (the images of
            ``pdnsr-infer`` and of the data preparation, the weights of a converter): refused when the output is
            one of them, or a folder that holds one (its outputs would replace or, with ``--overwrite``, remove it).
        refers (dict | None): ``{option: path}`` of the other files it reads (option files, weights, captions):
            refused when the output is one of them.

    Paths are compared resolved (symbolic links, ``..``, the same file under two names).

    Raises:
        UserError: one line naming both options and paths.
    """
    out = os.path.realpath(output)
    for kind, inputs in (('reads', reads), ('refers', refers)):
        for option, path in (inputs or {}).items():
            if path is None:
                continue
            given = os.path.realpath(path)
            same = given == out or (os.path.exists(given) and os.path.exists(out) and os.path.samefile(given, out))
            if same:
                problem = 'is'
            elif kind == 'reads' and _within(given, out):
                problem = 'holds'
            else:
                continue
            raise UserError(
                f'{flag} {output} {problem} {option} {path}: the command would write over what it reads; choose '
                f'an {flag} outside the inputs'
            )
