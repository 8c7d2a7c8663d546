"""Checks of a ``network_g`` option section against the registered architectures, before anything is built."""

import inspect

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
