"""What an export starts from: the trained network (compact bank), its options, its provenance and the prompt.

Shared by the ONNX and the spandrel formats of ``pdnsr-export``; library code (raises, never prints).
"""

import copy
import os

import numpy as np
import torch
from basicsr.archs import build_network

from pdnsr.archs.dcm_arch import convert_state_dict_to_compact, dcm_modules
from pdnsr.data.image_files import read_rgb
from pdnsr.errors import UserError
from pdnsr.inference import Upsampler
from pdnsr.provenance import encoder_record, file_sha256

PROMPT_SOURCES = ('text', 'image', 'embedding')


def to_compact(net, network_g):
    """``(network, network_g)`` with every DCM in the compact bank (the same function; docs/dcm.md).

    A paper-bank network is rebuilt with ``dcm: {bank: compact}`` and loaded with its state dict converted by
    :func:`pdnsr.archs.convert_state_dict_to_compact` (exact, in float64); a compact one (or a baseline) is
    returned as it is. ``network_g`` is not modified.
    """
    network_g = copy.deepcopy(dict(network_g))
    if all(m.bank == 'compact' for m in dcm_modules(net)):
        if dcm_modules(net):  # load_network reads the bank from the checkpoint: say so in the section too
            network_g['dcm'] = dict(network_g.get('dcm') or {}, bank='compact')
        return net, network_g
    state, _ = convert_state_dict_to_compact(net.state_dict())
    network_g['dcm'] = dict(network_g.get('dcm') or {}, bank='compact')
    compact = build_network(copy.deepcopy(network_g))
    compact.load_state_dict(state, strict=True)
    return compact.eval(), network_g


def exported_record(record, network_g):
    """The checkpoint's provenance ``record`` as it holds for the exported file: ``dcm.bank`` and
    ``network_g.dcm.bank`` say the bank that is written (compact), ``dcm.trained_bank`` the one the checkpoint had.

    Args:
        record (dict | None): the checkpoint's ``'pdnsr'`` entry (:mod:`pdnsr.provenance`); None: none (older
            checkpoints), returned as it is.
        network_g (dict): the section the exported network is built from (:func:`to_compact`'s).

    Returns:
        dict | None: a new record; ``record`` is not modified.
    """
    bank = (network_g.get('dcm') or {}).get('bank')
    if record is None or bank is None:  # no record, or a baseline: nothing about DCMs to restate
        return copy.deepcopy(record)
    record = copy.deepcopy(record)
    if isinstance(record.get('dcm'), dict):
        trained = record['dcm'].get('trained_bank', record['dcm'].get('bank'))
        record['dcm'] = {**record['dcm'], 'bank': bank, 'trained_bank': trained}
    if isinstance(record.get('network_g'), dict):  # as scripts/convert_dcm_bank.py restates it
        record['network_g']['dcm'] = {**(record['network_g'].get('dcm') or {}), 'bank': bank}
    return record


def load_for_export(opt_path, weights_path, **upsampler):
    """``(upsampler, network, network_g, record)``: the :class:`~pdnsr.inference.Upsampler` of ``weights_path``
    (``opt_path``: its option file, or None for the network the checkpoint records) on the CPU, for the prompt; its
    network with a paper bank converted to compact (:func:`to_compact`), eval; the ``network_g`` section the result
    needs; the checkpoint's provenance record (None for older checkpoints) as it holds for the compact network
    (:func:`exported_record`).

    Raises:
        FileNotFoundError, ValueError: as :func:`pdnsr.inference.load_network` (the message names the first key
            that does not fit).
    """
    up = Upsampler.from_checkpoint(weights_path, opt_path, 'cpu', **upsampler)
    net, network_g = to_compact(up.net, up.network_g)
    return up, net.eval(), network_g, exported_record(up.record, network_g)


def input_channels(network_g):
    """Image channels the network takes: ``num_in_ch`` / ``in_chans`` of the section (or of its ``base``), else 3."""
    section = network_g.get('base') if isinstance(network_g.get('base'), dict) else network_g
    return int(section.get('num_in_ch', section.get('in_chans', 3)))


def encode_prompt(up, source, value):
    """The ``(1, prompt_dim)`` float32 embedding to bake into the network of the Upsampler ``up`` (whose CLIP
    encoder and image view are the checkpoint's, :class:`~pdnsr.inference.Upsampler`), and where it came from.

    Args:
        source (str): ``'text'`` (``value`` is the caption), ``'image'`` (an image file, encoded in ``up.view``) or
            ``'embedding'`` (a ``.npy`` file of shape (d,) or (1, d)).

    Returns:
        tuple: ``(prompt (1, d), source)`` with ``source`` a JSON-able dict (kind, text or file name and SHA-256,
        view, encoder record).

    Raises:
        UserError, ValueError, OSError: a baseline network, an unreadable file, a size that is not ``prompt_dim``,
        another embedding space than the checkpoint's.
    """
    if source not in PROMPT_SOURCES:
        raise ValueError(f'prompt source must be one of {list(PROMPT_SOURCES)}, got {source!r}')
    if not up.takes_prompt:
        raise UserError(f'{type(up.net).__name__} is a baseline network (no DCM): it takes no prompt to bake in')
    if source == 'embedding':
        return _read_embedding(value, up.prompt_dim)
    rgb = read_rgb(value) if source == 'image' else None  # cheap errors before CLIP loads
    prompt = up.encode(value if rgb is None else rgb).float()
    used = encoder_record({**up.encoder.metadata(), 'kind': source, 'view': up.view if rgb is not None else None})
    if rgb is None:
        return prompt, {'kind': 'text', 'text': value, 'encoder': used}
    return prompt, {'kind': 'image', **_file_source(value), 'view': up.view, 'encoder': used}


def _file_source(path):
    return {'file': os.path.basename(os.fspath(path)), 'sha256': file_sha256(path)}


def _read_embedding(path, prompt_dim):
    """``(1, d)`` float32 from a ``.npy`` file of shape (d,) or (1, d)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'--prompt-embedding {path} does not exist')
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f'--prompt-embedding {path} is not a .npy array file: {err}') from err
    if array.ndim not in (1, 2) or array.size != prompt_dim or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f'--prompt-embedding {path} holds a {array.dtype} array of shape {array.shape}; the network takes one '
            f'float embedding of size prompt_dim={prompt_dim}, shape ({prompt_dim},) or (1, {prompt_dim})'
        )
    prompt = torch.from_numpy(np.asarray(array, dtype=np.float32).reshape(1, prompt_dim))
    if not torch.isfinite(prompt).all():
        raise ValueError(f'--prompt-embedding {path} holds NaN or infinite values')
    return prompt, {'kind': 'embedding', **_file_source(path)}
