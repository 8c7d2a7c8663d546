"""Checks of a ``network_g`` option section against the registered architectures, and building it once checked."""

import copy
import inspect
import os

import torch
from basicsr.utils.registry import ARCH_REGISTRY


def network_parameters(net_type, section='network_g'):
    """The constructor parameters of the registered network ``net_type`` (``inspect.Parameter`` by name).

    Raises:
        ValueError: no network of that name is registered; the message lists those that are.
    """
    if net_type not in ARCH_REGISTRY:
        raise ValueError(
            f'{section}.type {net_type!r} is not a registered network; registered: {sorted(ARCH_REGISTRY.keys())}'
        )
    return inspect.signature(ARCH_REGISTRY.get(net_type).__init__).parameters


def check_network_options(opt_net, section='network_g'):
    """Refuse a network section without ``type``, with an unknown type, or with options the type does not take.

    Args:
        opt_net (dict): the section as read from YAML (``type`` and the constructor's keyword arguments).
        section (str): its name in the option file, for the messages.

    Raises:
        ValueError: naming the section, the type and the offending options, with the valid ones.
    """
    if not isinstance(opt_net, dict):
        raise ValueError(f'{section} must be a mapping with type: and the network arguments')
    net_type = opt_net.get('type')
    if net_type is None:
        raise ValueError(f'{section}: missing "type" (e.g. type: RCANPlus)')
    params = network_parameters(net_type, section)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(opt_net) - set(params) - {'type'})
    if unknown:
        valid = sorted(set(params) - {'self'})
        raise ValueError(f'{section}: unknown option(s) {unknown} for type {net_type}; valid options: {valid}')


def available_memory():
    """Bytes of memory this machine can still give (``MemAvailable`` on Linux; all of it elsewhere), or None."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (AttributeError, OSError, ValueError):
        return None


def _gib(nbytes):
    return f'{nbytes / 2**30:.1f} GiB'


def build_network(opt_net, section='network_g', copies=1):
    """The network of a ``network_g`` section, on the CPU, with fresh weights; its size is checked first.

    The network is built once on the meta device (shapes, no memory) and refused when ``copies`` times its
    parameters and buffers exceed the memory this machine has left (``copies``: 4 for training, which keeps the
    weights, their gradients and Adam's two moments). A constructor that computes with tensor values (basicsr's
    SwinIR) cannot run on the meta device; it is built directly, and a failed allocation is reported as one line.

    Raises:
        ValueError: the section is wrong (:func:`check_network_options`), the constructor refuses its arguments, or
            the network does not fit in memory (naming its size and the memory there is).
    """
    check_network_options(opt_net, section)
    cls = ARCH_REGISTRY.get(opt_net['type'])
    args = {k: v for k, v in copy.deepcopy(dict(opt_net)).items() if k != 'type'}
    try:
        with torch.device('meta'):
            shapes = cls(**copy.deepcopy(args))
        nbytes = sum(t.numel() * t.element_size() for t in (*shapes.parameters(), *shapes.buffers()))
        count = sum(p.numel() for p in shapes.parameters())
    except (TypeError, ValueError) as err:
        raise ValueError(f'{section}: {" ".join(str(err).split())}') from None
    except (RuntimeError, NotImplementedError):  # a constructor that reads tensor values: measured when built
        nbytes = None
    free = available_memory()
    if nbytes is not None and free is not None and nbytes * copies > free:
        need = f'{copies} x {_gib(nbytes)}' if copies > 1 else _gib(nbytes)
        raise ValueError(
            f'{section}: {opt_net["type"]} would have {count:,} parameters ({_gib(nbytes)}); it needs {need} '
            f'of memory but this machine has {_gib(free)} free: make it smaller (num_feat, num_block, dcm.num_kernels)'
        )
    try:
        return cls(**args)
    except (TypeError, ValueError) as err:
        raise ValueError(f'{section}: {" ".join(str(err).split())}') from None
    except RuntimeError as err:
        if 'alloc' not in str(err).lower() and 'memory' not in str(err).lower():
            raise
        raise ValueError(f"{section}: {opt_net['type']} does not fit in this machine's memory: {err}") from None
