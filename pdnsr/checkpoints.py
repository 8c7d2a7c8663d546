"""Checkpoints: reading them safely, fitting their weights to a network, writing them atomically with provenance.

The one home of these rules for inference, testing, training (PDNModel's saves and ``--auto_resume``), the bank
converter and the exporters:

- weights are finite: a tensor with a NaN or an infinity is refused when the file is opened, naming it;
- files are read with ``torch.load(weights_only=True)`` only (plain tensors and containers; a file that would need
  unpickling arbitrary objects is refused, never "loaded with weights_only=False");
- a basicsr checkpoint holds ``params`` and / or ``params_ema`` (EMA preferred), pdnsr's also ``'pdnsr'``
  (:mod:`pdnsr.provenance`); a bare state dict works too; a ``module.`` prefix (DataParallel / DDP) is stripped;
- the DCM layout of the weights is read from the keys: a paper-bank checkpoint loads into a compact-bank network
  (converted exactly), the other way round is refused naming the option to set, and a checkpoint of one router is
  never loaded into a DCM of the other (that would silently change the function);
- writes go to a temporary name in the same folder and are renamed into place, so a crash never leaves a truncated
  file under the final name.
"""

import collections
import os
import re

import torch

from pdnsr.archs.dcm_arch import ROUTER_MARKERS, convert_state_dict_to_compact, dcm_modules
from pdnsr.utils.files import written_atomically

PARAM_KEYS = ('params_ema', 'params')


# The first bytes of what torch.save writes: a zip archive (torch >= 1.6), or a pickle (protocol 2 and later, the
# legacy format). Anything else is another kind of file; the common ones are named in the error.
_TORCH_SIGNATURES = (b'PK\x03\x04', b'\x80\x02', b'\x80\x03', b'\x80\x04', b'\x80\x05')
_OTHER_SIGNATURES = {
    b'\x89PNG': 'a PNG image',
    b'\xff\xd8\xff': 'a JPEG image',
    b'GIF8': 'a GIF image',
    b'\x1f\x8b': 'a gzip archive',
}


def _kind_of_file(head):
    """What the first bytes ``head`` of a file say it is: None for a torch.save file, else a few words."""
    if head.startswith(_TORCH_SIGNATURES):
        return None
    if not head:
        return 'an empty file'
    for signature, kind in _OTHER_SIGNATURES.items():
        if head.startswith(signature):
            return kind
    if len(head) >= 9 and head[8:9] == b'{':  # 8-byte little-endian header length, then the JSON header
        return 'a safetensors file'
    return 'its first bytes are not those of a file written by torch.save'


def read_checkpoint(path, what='weights file'):
    """The object saved in ``path``, loaded on the CPU with ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable checkpoint: another kind of file (an image...), truncated or damaged,
            or it holds objects a weights file must not hold; the message starts with ``what`` and the path, and
            never repeats torch's advice to load with ``weights_only=False`` (that runs code from the file).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{what} {path} does not exist')
    with open(path, 'rb') as f:
        kind = _kind_of_file(f.read(16))
    if kind is not None:
        raise ValueError(f'cannot read {what} {path}: it is not a PyTorch checkpoint ({kind})')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # torch raises several types (UnpicklingError, RuntimeError, EOFError) for bad files
        message = ' '.join(str(err).split())
        # An object weights_only refuses to build: "Unsupported global: GLOBAL x.y", or "unsupported GLOBAL x.y whose
        # module x is blocked" (a callable of a blocked module, e.g. os.system).
        if re.search(r'unsupported global|allowlist', message, re.IGNORECASE):
            found = re.search(r'GLOBAL (\S+)', message)
            what_object = f'{found.group(1)}; ' if found else ''
            reason = (
                f'it holds Python objects that a weights file must not hold ({what_object}loading it would run '
                'their code)'
            )
        else:
            reason = 'it is not a complete PyTorch checkpoint (truncated or damaged)'
        raise ValueError(f'cannot read {what} {path}: {reason}') from None


def state_dict_of(checkpoint, path, param_key=None):
    """(state dict, key used) of a loaded checkpoint: ``param_key`` if given (else ``params_ema``, else ``params``),
    else the checkpoint itself as a bare state dict; ``module.`` prefixes stripped."""
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f'weights file {path} holds a {type(checkpoint).__name__}, not a state dict or a basicsr checkpoint'
        )
    keys = [param_key] if param_key else list(PARAM_KEYS)
    if param_key == 'params_ema' and 'params_ema' not in checkpoint:
        keys.append('params')  # basicsr's rule: a checkpoint saved without EMA serves params_ema requests
    for key in keys:
        if key in checkpoint:
            state, used = checkpoint[key], key
            break
    else:
        if not checkpoint or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            raise ValueError(
                f'weights file {path} has neither {" nor ".join(keys)} and is not a bare state dict '
                f'(top-level keys: {sorted(map(str, checkpoint))[:8]})'
            )
        state, used = checkpoint, 'state_dict'
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f'weights file {path}: its {used!r} entry is not a state dict (parameter names -> tensors) but a '
            f'{type(state).__name__}'
        )
    state = {k[len('module.') :] if k.startswith('module.') else k: v for k, v in state.items()}
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise ValueError(
                f'weights file {path} ({used}): tensor {key!r} holds {bad} NaN or infinite value(s); '
                'the training that wrote it diverged or the file is damaged: use an earlier checkpoint'
            )
    return state, used


def dcm_layout_of(state):
    """The DCM layout of a state dict: ``{'bank': 'paper' | 'compact' | None, 'router': ... | None}``.

    The bank is read from the keys (``<dcm>.weight`` 5-D: paper; ``<dcm>.kernel``: compact); the router from its
    marker key (:data:`pdnsr.archs.dcm_arch.ROUTER_MARKERS`; none: the paper's router). None where there is no DCM
    (or no router).
    """
    routers = [k[: -len('router.0.weight')] for k in state if k.endswith('router.0.weight')]
    banks = {'paper' for k, v in state.items() if k.endswith('.weight') and v.dim() == 5}
    banks |= {'compact' for k in state if k.endswith('.mask_kernel')}
    router = None
    if routers:
        kinds = {next((r for r, m in ROUTER_MARKERS.items() if f'{p}{m}' in state), 'paper') for p in routers}
        router = kinds.pop() if len(kinds) == 1 else 'mixed'
    return {'bank': banks.pop() if len(banks) == 1 else ('mixed' if banks else None), 'router': router}


def network_layout(net):
    """``{'bank', 'router'}`` of the DCMs of ``net`` (None for a network without DCMs)."""
    dcms = dcm_modules(net)
    if not dcms:
        return None
    router = dcms[0].router_kind if dcms[0].use_dynamic else None
    return {'bank': dcms[0].bank, 'router': router}


def adapt_dcm_layout(net, state, path):
    """``state`` with its DCMs in ``net``'s layout: converted to the compact bank when ``net`` has it and the file
    has the paper's (exact); a compact file for a paper network, or a file of the other router, is a ValueError
    naming the option to set."""
    have, want = dcm_layout_of(state), network_layout(net)
    if want is not None and have['bank'] is not None:
        if have['bank'] == 'paper' and want['bank'] == 'compact':
            state, _ = convert_state_dict_to_compact(state)
        elif have['bank'] == 'compact' and want['bank'] == 'paper':
            raise ValueError(
                f'weights file {path} holds compact-bank DCMs but the network was built with the paper bank; '
                f'set dcm: {{bank: compact}} under network_g'
            )
        if have['router'] not in (None, want['router']) and want['router'] is not None:
            raise ValueError(
                f'weights file {path} was trained with router: {have["router"]} but the network is built with '
                f'router: {want["router"]}; set dcm: {{router: {have["router"]}}} under network_g (loading the '
                f'weights into the other router would silently change what the network computes)'
            )
    return state


def fit_state_dict(net, state, path, used='params'):
    """``state`` made to fit ``net`` exactly (:func:`adapt_dcm_layout`); a missing, unexpected or differently shaped
    key is a ValueError naming the file, the first mismatching key and what to do."""
    expected = net.state_dict()
    if expected and not any(key in expected for key in state):
        raise ValueError(
            f'weights file {path} ({used}) has none of the parameter names of {type(net).__name__}, the network of '
            f'the option file (the file has {sorted(state)[:3]}...): it is not a checkpoint of this network; pass '
            'the weights of a model trained with this option file'
        )
    state = adapt_dcm_layout(net, state, path)
    problems = []
    for key, value in expected.items():
        if key not in state:
            problems.append(f'missing key {key!r}')
        elif tuple(state[key].shape) != tuple(value.shape):
            problems.append(
                f'key {key!r} has shape {tuple(state[key].shape)} in the file but {tuple(value.shape)} in the network'
            )
    problems += [f'unexpected key {key!r}' for key in state if key not in expected]
    if problems:
        more = f' (and {len(problems) - 1} more mismatches)' if len(problems) > 1 else ''
        raise ValueError(
            f'weights file {path} ({used}) does not fit the network {type(net).__name__} of the option file: '
            f'{problems[0]}{more}; use the option file the model was trained with'
        )
    return state


def save_checkpoint(obj, path):
    """``torch.save(obj, path)`` through a temporary file in the same folder, renamed into place."""
    with written_atomically(path) as tmp:
        torch.save(obj, tmp)
    return path


# What basicsr's training states hold beyond tensors and containers: MultiStepRestartLR keeps its milestones in a
# Counter. Nothing else is allowed when a state is loaded.
_TRAINING_STATE_GLOBALS = [collections.Counter]


def read_training_state(path):
    """A ``.state`` file of basicsr's training loop, loaded with ``weights_only=True`` and only the classes above
    allowed. Raises ValueError for an unreadable or unsafe file (the message names it)."""
    with torch.serialization.safe_globals(_TRAINING_STATE_GLOBALS):
        state = read_checkpoint(path, 'training state')
    if not isinstance(state, dict) or not {'iter', 'epoch', 'optimizers', 'schedulers'} <= set(state):
        raise ValueError(f'training state {path} is not a basicsr training state (iter, epoch, optimizers, schedulers)')
    return state
