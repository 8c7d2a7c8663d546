"""A model's record of its prompts: the embedding space it was trained in, and the layout of its DCM weights.

A network trained on prompts from one CLIP (or from random weights) is meaningless with prompts from another: the
embedding space is part of the model. Every checkpoint pdnsr writes (training saves, EMA, the bank converter,
exports) therefore carries, beside basicsr's ``params`` / ``params_ema``, a top-level entry ``'pdnsr'`` of plain
JSON values (readable with ``torch.load(..., weights_only=True)``)::

    {'format': 1,
     'prompt_encoder': {'model_name': 'ViT-B-32', 'weights': 'openai', 'kind': 'text', 'view': None},
     'prompt_dim': 512,
     'dcm': {'bank': 'paper', 'router': 'scaled'},
     'network_g': {...}}                       # the option section the weights fit

``weights`` names the CLIP weights: an open_clip pretrained tag (``openai``, ``laion2b_s34b_b79k``), the SHA-256 of
a local checkpoint file (``sha256:<hex>``, so the same file under another path matches), or ``random-seed-<n>`` for
the random-weight encoder of tests and demos. ``kind`` / ``view`` are the prompt store's (text, image or mixed; the
image view for image prompts). Checkpoints without the entry (older ones, basicsr's) keep working, with a warning.
"""

import functools
import hashlib
import os

from pdnsr.errors import UserError

KEY = 'pdnsr'
FORMAT = 1


@functools.lru_cache(maxsize=16)
def _sha256(path, size, mtime):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 22), b''):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path):
    """SHA-256 (hex) of a file, cached per (path, size, modification time): a CLIP checkpoint is hashed once."""
    path = os.path.realpath(path)
    stat = os.stat(path)
    return _sha256(path, stat.st_size, stat.st_mtime_ns)


def weights_id(pretrained, seed=0, sha256=None):
    """The identity of CLIP weights: a tag as it is, ``sha256:<hex>`` for a file, ``random-seed-<n>`` for none."""
    if pretrained in (None, '', 'none', 'None'):
        return f'random-seed-{int(seed or 0)}'
    if sha256:
        return f'sha256:{sha256}'
    if os.path.isfile(pretrained):
        return f'sha256:{file_sha256(pretrained)}'
    return str(pretrained)


def weights_tag(pretrained):
    """A short, file-name-safe name of CLIP weights for naming prompt stores: ``random`` for none, the tag itself
    (``openai``), or a weights file's name with the first 8 hex digits of its SHA-256 (a file rewritten in place, or
    another file of the same name, gets another tag)."""
    identity = weights_id(pretrained)
    if identity.startswith('random-seed-'):
        return 'random'
    if identity.startswith('sha256:'):
        return f'{os.path.splitext(os.path.basename(pretrained))[0]}_{identity[len("sha256:") :][:8]}'
    return identity.replace(os.sep, '_')


def encoder_record(meta):
    """The embedding space of a prompt store, from its metadata (or :meth:`PromptEncoder.metadata` plus kind/view).

    Returns:
        dict: ``model_name``, ``weights`` (:func:`weights_id`), ``kind`` and ``view`` (None when unknown).
    """
    weights = weights_id(meta.get('pretrained'), meta.get('random_init_seed', 0), meta.get('weights_sha256'))
    if weights.endswith(('.bin', '.pt', '.pth', '.safetensors', '.ckpt')) or os.sep in weights:
        weights = f'file:{os.path.basename(weights)}'  # a store built before weights were hashed, file since moved
    return {
        'model_name': meta.get('model_name'),
        'weights': weights,
        'kind': meta.get('kind'),
        'view': meta.get('view'),
    }


def describe(record):
    """'open_clip ViT-B-32 with weights openai' (for messages)."""
    weights = record['weights']
    if weights.startswith('sha256:'):
        weights = f'file {weights[:19]}…'
    return f'open_clip {record["model_name"]} with weights {weights}'


def same_space(a, b):
    """True when two encoder records describe the same embedding space (model and weights; a ``file:`` record of an
    older store matches any file of that name)."""
    if a['model_name'] != b['model_name']:
        return False
    wa, wb = a['weights'], b['weights']
    if wa.startswith('file:') or wb.startswith('file:'):
        return wa.startswith(('file:', 'sha256:')) and wb.startswith(('file:', 'sha256:'))
    return wa == wb


def prompts_differ(trained, given):
    """The fields (``kind``: text, image, mixed; ``view``) in which the prompts of two records differ, where both
    say. The paper mixes text and image prompts in one CLIP space, so a difference is allowed, but it is not what
    the model was trained on: worth a warning, never a refusal."""
    return [f for f in ('kind', 'view') if None not in (trained.get(f), given.get(f)) and trained[f] != given[f]]


def describe_prompts(record, fields):
    """'kind image, view flip' (for messages)."""
    return ', '.join(f'{f} {record.get(f)}' for f in fields)


def check_same_space(trained, given, trained_what, given_what, force=False, warn=None, override='--force-encoder'):
    """Refuse prompts from another embedding space than the model's.

    Args:
        trained (dict | None): the model's encoder record (None: unknown, an old checkpoint: nothing to check).
        given (dict): the record of the prompts about to be used.
        trained_what, given_what (str): what each comes from, for the message (a checkpoint path, a store path,
            ``--clip-pretrained X``).
        force (bool): warn instead of refusing (``--force-encoder``).
        warn (callable | None): where warnings go (None: nowhere): the forced mismatch, and prompts of the same
            space but of another kind or view than training's (:func:`prompts_differ`).
        override (str): what the user sets to force it, for the message (``force_encoder: true`` in an option file).

    Raises:
        UserError: the spaces differ and ``force`` is false; the message names both and the override.
    """
    if trained is None:
        return
    if same_space(trained, given):
        differ = prompts_differ(trained, given)
        if differ and warn is not None:
            warn(
                f'{given_what} gives prompts of {describe_prompts(given, differ)} but {trained_what} was trained on '
                f'prompts of {describe_prompts(trained, differ)}; one CLIP space, so they are used'
            )
        return
    message = (
        f'{given_what} gives prompts of {describe(given)}, but {trained_what} was trained on prompts of '
        f'{describe(trained)}: its output would be meaningless'
    )
    if not force:
        verb = 'pass' if override.startswith('--') else 'set'
        raise UserError(f'{message}; use the same encoder (--clip-model / --clip-pretrained) or {verb} {override}')
    if warn is not None:
        warn(f'{message} ({override}: continuing anyway)')


def of_checkpoint(checkpoint):
    """The record of a loaded checkpoint (a dict), or None when it has none (older pdnsr, basicsr)."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get(KEY), dict):
        return checkpoint[KEY]
    return None


def make_record(network_opt, encoder=None, prompt_dim=None, dcm_layout=None):
    """A checkpoint's ``'pdnsr'`` entry.

    Args:
        network_opt (dict): the ``network_g`` section the weights fit (copied, JSON values only).
        encoder (dict | None): :func:`encoder_record` of the training prompts (None for a baseline network).
        prompt_dim (int | None): the network's prompt size.
        dcm_layout (dict | None): ``{'bank': ..., 'router': ...}`` of the network's DCMs.
    """
    return {
        'format': FORMAT,
        'prompt_encoder': None if encoder is None else dict(encoder),
        'prompt_dim': prompt_dim,
        'dcm': None if dcm_layout is None else dict(dcm_layout),
        'network_g': _plain(network_opt),
    }


def _plain(value):
    """``value`` with dicts / lists / scalars only (OrderedDicts from basicsr's YAML loader become dicts)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
