"""DCMs in any registered network: prompt guidance added after chosen modules, without copying the network.

``PromptGuided`` (generic, from YAML), ``RRDBNetPlus`` (ESRGAN / Real-ESRGAN's generator, a DCM after each RRDB)
and ``SwinIRPlus`` (a DCM after each residual Swin transformer block) are built the same way:

- **The network is the base network.** A prompt-guided network is an instance of a subclass of the base class
  (``RRDBNetPlus(PromptGuidedMixin, RRDBNet)``; ``PromptGuided`` creates such a subclass for ``base.type``), built by
  the base's own ``__init__``. Parameter names are therefore the base's own (``conv_first.weight``, ``body.0...``),
  with the DCMs under ``dcms.N``: a published RRDBNet / SwinIR checkpoint loads as it is (only ``dcms.*`` missing),
  and ``state_dict``, ``named_parameters`` (basicsr's EMA), DataParallel / DDP wrapping and ``load_network`` see one
  naming. No ``base.`` prefix exists to be mapped.
- **DCMs run in forward hooks** registered once, at construction, on the modules that ``dcm_after`` names. Each hook
  replaces the module's output ``y`` by ``y + dcm(y, prompt)``: a feature map ``(B, C, H, W)`` directly, a token
  sequence ``(B, H*W, C)`` (a SwinIR RSTB's output) through ``(B, C, H, W)`` with the ``x_size = (H, W)`` the
  module was called with.
- **The prompt reaches the hooks through a context variable**, set by ``forward(lq, prompt)`` around the base's
  forward and reset in ``finally``. A context variable is per thread, so two threads calling one network, and
  DataParallel's replicas (each runs in its own thread) never see each other's prompt. What it holds is the call:
  ``(token, network, prompt, ran)``; a hook takes DCM ``i`` from *that* network, not from the one it was
  registered on, because DataParallel's replicas share their modules' hook dicts with the original (shallow copies)
  while each replica has its own DCMs on its own device. Nothing is stored on a module during forward.
- **torch.compile** traces ``ContextVar.get`` (with a guard) but not ``set`` / ``reset``: there are exactly two
  graph breaks, at the entry and the exit of ``forward``; the base's forward with every DCM is one graph, reused
  for every prompt (no recompilation per prompt). ``fullgraph=True`` is therefore refused.

Checks: at construction, a ``dcm_after`` pattern that matches no module (the error lists module paths), an unknown
base option, a channel count that cannot be found (give ``num_feat``); at every forward (so the first training
iteration fails before any optimiser step), a matched module whose output is neither a feature map nor a token
sequence, or whose channels differ from ``num_feat``, and a matched module that did not run.
"""

import contextvars
import fnmatch
import inspect
import itertools
import re
from collections import namedtuple

import torch
from basicsr.archs.rrdbnet_arch import RRDBNet
from basicsr.archs.swinir_arch import SwinIR
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from pdnsr.archs.dcm_arch import DynamicCorrelationModule
from pdnsr.archs.network_options import network_parameters
from pdnsr.archs.plus_util import base_input_multiple, make_dcms, pad_to_multiple, plus_signature

# The prompt-guided forward in progress in this thread (or asyncio task), or None outside any.
_ACTIVE_CALL = contextvars.ContextVar('pdnsr_prompt_guided_call', default=None)
# token: which network's forward it is (copied into DataParallel replicas, which are the same network);
# net: the module whose forward runs (a replica under DataParallel); ran: one flag per DCM, set by its hook.
_Call = namedtuple('_Call', 'token net prompt ran')
_TOKENS = itertools.count()

# Base arguments that give the width of the features after the matched modules, in order of preference.
_CHANNEL_ARGS = ('num_feat', 'embed_dim')


# ---------------------------------------------------------------------------------------------------------------------
# module paths
def match_module_paths(module, patterns):
    """Paths of ``module``'s submodules matched by ``patterns`` (globs), in definition order.

    A pattern is a dotted module path in which ``*``, ``?`` and ``[...]`` match within one path segment:
    ``body.*`` is every direct child of ``body`` (``body.0``, ``body.1``...), not their children.

    Raises:
        ValueError: a pattern matches nothing; the message lists the module paths that exist.
    """
    names = [name for name, _ in module.named_modules() if name]
    split = {name: name.split('.') for name in names}
    matched = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f'dcm_after: {pattern!r} is not a module path pattern (e.g. "body.*")')
        parts = pattern.split('.')
        hits = [
            n
            for n in names
            if len(split[n]) == len(parts) and all(fnmatch.fnmatchcase(s, p) for s, p in zip(split[n], parts))
        ]
        if not hits:
            raise ValueError(
                f'dcm_after: {pattern!r} matches no module of {type(module).__name__} ("*" stands for one path '
                f'segment); its module paths include: {summarize_paths(names)}'
            )
        matched += hits
    chosen = set(matched)
    return [n for n in names if n in chosen]


def summarize_paths(names, depth=2, limit=40):
    """Module paths up to ``depth`` segments, numbered siblings collapsed (``body.0 … body.22``), for messages."""
    shown, runs = [], {}
    for name in names:
        parts = name.split('.')
        if len(parts) > depth:
            continue
        if parts[-1].isdigit():
            parent = '.'.join(parts[:-1])
            if parent in runs:
                runs[parent][1] = parts[-1]
                continue
            runs[parent] = [parts[-1], parts[-1]]
            shown.append(('run', parent))
        else:
            shown.append(('name', name))
    text = []
    for kind, value in shown:
        if kind == 'name':
            text.append(value)
        else:
            first, last = runs[value]
            text.append(f'{value}.{first}' if first == last else f'{value}.{first} … {value}.{last}')
    more = f', … ({len(text) - limit} more)' if len(text) > limit else ''
    return ', '.join(text[:limit]) + more


# ---------------------------------------------------------------------------------------------------------------------
# the hook
def _x_size(args, kwargs, length):
    """The ``(H, W)`` with ``H * W == length`` that a token-sequence module was called with (``x_size``), or None."""
    candidates = [kwargs['x_size']] if 'x_size' in kwargs else list(args[1:])
    for value in candidates:
        if isinstance(value, (tuple, list, torch.Size)) and len(value) == 2 and value[0] * value[1] == length:
            return int(value[0]), int(value[1])
    return None


def _describe(value):
    if isinstance(value, torch.Tensor):
        return f'a tensor of shape {tuple(value.shape)}'
    return f'a {type(value).__name__}'


def _with_dcm(dcm, output, prompt, args, kwargs, path, network):
    """``output + dcm(output, prompt)`` for a feature map ``(B, C, H, W)`` or a token sequence ``(B, H*W, C)``."""
    c = dcm.num_feat
    if isinstance(output, torch.Tensor) and output.dim() == 4:
        if output.shape[1] != c:
            raise ValueError(
                f'{network}: module {path!r} outputs {_describe(output)}, {output.shape[1]} channels, but its DCM '
                f'was built for num_feat={c}; set num_feat: {output.shape[1]} in network_g (or choose other '
                f'dcm_after modules)'
            )
        return output + dcm(output, prompt)
    if isinstance(output, torch.Tensor) and output.dim() == 3:
        b, length, channels = output.shape
        size = _x_size(args, kwargs, length)
        if size is None:
            raise ValueError(
                f'{network}: module {path!r} outputs {_describe(output)}, read as a token sequence (B, H*W, C), '
                f'but it was not called with an x_size (H, W) whose product is {length}; choose modules whose '
                f'output is a feature map (B, C, H, W) or that take x_size (e.g. a SwinIR RSTB)'
            )
        if channels != c:
            raise ValueError(
                f'{network}: module {path!r} outputs tokens of {channels} channels ({_describe(output)}) but its '
                f'DCM was built for num_feat={c}; set num_feat: {channels} in network_g'
            )
        h, w = size
        feat = output.transpose(1, 2).reshape(b, c, h, w)
        return output + dcm(feat, prompt).flatten(2).transpose(1, 2)
    raise ValueError(
        f'{network}: module {path!r} outputs {_describe(output)}; a DCM needs a feature map (B, C, H, W) or a '
        f'token sequence (B, H*W, C) with its x_size: choose other dcm_after modules'
    )


def _dcm_hook(token, index, path, network):
    """Forward hook of the module at ``path``: adds DCM ``index`` of the network whose forward is running.

    Captures no module: under DataParallel the hook dicts are shared by the replicas, the DCMs are not.
    """

    def hook(module, args, kwargs, output):
        call = _ACTIVE_CALL.get()
        if call is None or call.token != token:
            raise RuntimeError(
                f"{network}: module {path!r} ran outside the network's forward, so no prompt reached the DCM "
                f'after it; call net(lq, prompt)'
            )
        call.ran[index] = True
        return _with_dcm(call.net.dcms[index], output, call.prompt, args, kwargs, path, network)

    return hook


# ---------------------------------------------------------------------------------------------------------------------
# the mechanism
def _check_base_options(base_cls, options, section):
    """Refuse options ``base_cls.__init__`` has no parameter for (SwinIR's ``**kwargs`` would swallow a typo)."""
    params = inspect.signature(base_cls.__init__).parameters
    named = {
        name for name, p in params.items() if name != 'self' and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    unknown = sorted(set(options) - named)
    if unknown:
        raise ValueError(
            f'{section}: unknown option(s) {unknown} for {base_cls.__name__}; valid options: {sorted(named)}'
        )


def channels_of(base_cls, options, num_feat, network):
    """The DCMs' channel count: ``num_feat`` if given, else the base's ``num_feat`` / ``embed_dim`` argument."""
    if num_feat is not None:
        if not isinstance(num_feat, int) or num_feat < 1:
            raise ValueError(f'{network}: num_feat must be a positive integer, got {num_feat!r}')
        return num_feat
    params = inspect.signature(base_cls.__init__).parameters
    for name in _CHANNEL_ARGS:
        if name in options:
            return options[name]
        if name in params and params[name].default is not inspect.Parameter.empty:
            return params[name].default
    raise ValueError(
        f'{network}: cannot tell the channel count of the features after the dcm_after modules: '
        f'{base_cls.__name__} takes neither {" nor ".join(_CHANNEL_ARGS)}; give num_feat: C in network_g'
    )


class PromptGuidedMixin:
    """Prompt guidance for a network class: put it first in the bases, ``class XPlus(PromptGuidedMixin, X)``.

    After the base's ``__init__``, :meth:`add_prompt_guidance` adds the DCMs and their hooks; ``forward(lq, prompt)``
    runs the base's forward with the prompt reaching every DCM (see the module docstring).
    """

    def add_prompt_guidance(self, dcm_after, prompt_dim, dcm=None, num_feat=64, network=None):
        """Add one DCM after each module matched by ``dcm_after`` (a glob or a list of globs of module paths).

        The DCMs are ``self.dcms[i]`` in the order of the matched modules in ``named_modules()``; their paths are
        ``self.dcm_paths``. ``dcm`` holds the DCM options (as for EDSRPlus); ``num_feat`` their channel count.
        """
        network = network or type(self).__name__
        for name in ('dcms', 'prompt_dim', 'dcm_paths'):
            if hasattr(self, name):
                raise ValueError(f'{network}: the base network already has an attribute {name!r}; cannot add DCMs')
        if any(isinstance(m, DynamicCorrelationModule) for m in self.modules()):
            raise ValueError(f'{network}: the base network already contains DCMs (it takes a prompt itself)')
        if not isinstance(prompt_dim, int) or prompt_dim < 1:
            raise ValueError(f'{network}: prompt_dim must be a positive integer, got {prompt_dim!r}')
        patterns = [dcm_after] if isinstance(dcm_after, str) else list(dcm_after or [])
        if not patterns:
            raise ValueError(f'{network}: dcm_after is empty; give module path patterns such as ["body.*"]')
        paths = match_module_paths(self, patterns)
        self.prompt_dim = prompt_dim
        self.dcm_paths = tuple(paths)
        self.dcms = make_dcms(len(paths), num_feat, prompt_dim, dcm, network)
        # Shared with DataParallel replicas through the shallow copy of __dict__: a replica is the same network.
        self._prompt_token = next(_TOKENS)
        for index, path in enumerate(paths):
            hook = _dcm_hook(self._prompt_token, index, path, network)
            self.get_submodule(path).register_forward_hook(hook, with_kwargs=True)

    def forward(self, lq, prompt=None):
        """The base network's forward on ``lq`` with ``prompt (B, prompt_dim)`` (None: zero prompt) in every DCM.

        lq: what the base takes, e.g. (B, 3, H, W). Returns the base's output, e.g. (B, 3, s*H, s*W).
        """
        call = _Call(self._prompt_token, self, prompt, [False] * len(self.dcms))
        reset = _ACTIVE_CALL.set(call)
        try:
            out = super().forward(lq)
        finally:
            _ACTIVE_CALL.reset(reset)
        if not all(call.ran):
            idle = [p for p, ran in zip(self.dcm_paths, call.ran) if not ran]
            raise ValueError(
                f'{type(self).__name__}: dcm_after module(s) {idle} did not run in forward, so their DCMs are '
                f'never used (and never trained); choose modules the forward calls'
            )
        return out

    def _padded_forward(self, x, prompt, scale):
        """:meth:`forward` on ``x`` padded to what the base needs (:func:`~pdnsr.archs.plus_util.pad_to_multiple`,
        :func:`~pdnsr.archs.plus_util.base_input_multiple`), with the output cropped back to ``scale`` times the
        input size (for bases that need such input sizes; such a class sets ``pads_input = True``)."""
        h, w = x.shape[-2:]
        padded = pad_to_multiple(x, base_input_multiple(self))
        out = PromptGuidedMixin.forward(self, padded, prompt)
        return out if padded is x else out[..., : h * scale, : w * scale]


# Subclasses of (PromptGuided, base class) made for PromptGuided's `base.type`, one per base class.
_GUIDED_CLASSES = {}


def _guided_class(base_type):
    if not isinstance(base_type, str):
        raise ValueError(f'network_g.base.type must be a registered network name, got {base_type!r}')
    network_parameters(base_type, 'network_g.base')  # an unknown type: ValueError listing the registered ones
    base_cls = ARCH_REGISTRY.get(base_type)
    if not (isinstance(base_cls, type) and issubclass(base_cls, nn.Module)):
        raise ValueError(f'network_g.base.type {base_type}: not an nn.Module class')
    if issubclass(base_cls, PromptGuidedMixin) or 'prompt_dim' in inspect.signature(base_cls.__init__).parameters:
        raise ValueError(f'network_g.base.type {base_type} takes a prompt already; give its baseline as base')
    if base_cls not in _GUIDED_CLASSES:
        name = f'PromptGuided{re.sub(r"[^0-9A-Za-z_]", "_", base_cls.__name__)}'
        _GUIDED_CLASSES[base_cls] = type(
            name, (PromptGuided, base_cls), {'__module__': __name__, '__doc__': f'{base_cls.__name__} + DCMs.'}
        )
    return _GUIDED_CLASSES[base_cls]


@ARCH_REGISTRY.register()
class PromptGuided(PromptGuidedMixin, nn.Module):
    """Any registered network with DCMs added residually after the modules ``dcm_after`` names.

    ``PromptGuided(base={'type': 'RRDBNet', ...}, dcm_after=['body.*'])`` is an instance of a subclass of both
    ``PromptGuided`` and ``RRDBNet``, built by ``RRDBNet.__init__``: same parameter names, same methods.

    Args:
        base (dict): the base network's ``network_g`` section: ``type`` (registered, without a prompt) and its
            arguments.
        dcm_after (str | list[str]): module path globs of the base (``*`` = one path segment), e.g. ``body.*``.
        prompt_dim (int): size of the prompt embedding. Default 512 (CLIP ViT-B/32).
        dcm (dict | None): options of every DCM, as for ``EDSRPlus``.
        num_feat (int | None): channels of the matched modules' outputs; None = the base's ``num_feat`` or
            ``embed_dim`` argument (given or default).

    ``forward(lq, prompt)``: lq as the base takes it, prompt (B, prompt_dim) or None.
    """

    def __new__(cls, base=None, *args, **kwargs):
        if cls is PromptGuided:  # built from options: become the subclass for base.type
            if not isinstance(base, dict) or 'type' not in base:
                raise ValueError("network_g.base must be a mapping with the base network's type: and arguments")
            cls = _guided_class(base['type'])
        return super().__new__(cls)

    def __init__(self, base, dcm_after, prompt_dim=512, dcm=None, num_feat=None):
        base_options = {k: v for k, v in base.items() if k != 'type'}
        base_cls = next(c for c in type(self).__mro__ if c not in (type(self), PromptGuided, PromptGuidedMixin))
        _check_base_options(base_cls, base_options, 'network_g.base')
        base_cls.__init__(self, **base_options)
        self.base_type = base['type']
        channels = channels_of(base_cls, base_options, num_feat, f'PromptGuided({base["type"]})')
        self.add_prompt_guidance(dcm_after, prompt_dim, dcm, channels, f'PromptGuided({base["type"]})')


# ---------------------------------------------------------------------------------------------------------------------
# ready placements
@ARCH_REGISTRY.register()
class RRDBNetPlus(PromptGuidedMixin, RRDBNet):
    """basicsr's RRDBNet (ESRGAN, Real-ESRGAN's generator) with one DCM after each RRDB (``body.0`` ...).

    Takes ``RRDBNet``'s arguments (same parameter names: ``RealESRGAN_x4plus.pth`` / ``ESRGAN_SRx4_DF2KOST_official``
    load with only ``dcms.*`` missing) plus ``prompt_dim`` (default 512) and ``dcm`` (DCM options, as for
    ``EDSRPlus``). ``forward(x, prompt)``: x (B, num_in_ch, h, w), prompt (B, prompt_dim) or None; returns
    (B, num_out_ch, scale*h, scale*w). At scale 2 (1) RRDBNet pixel-unshuffles by 2 (4): odd sizes are
    reflection-padded and the output cropped, as Real-ESRGAN's inference does.
    """

    pads_input = True  # any input size (pdnsr.archs.plus_util.input_multiple)

    def __init__(
        self, num_in_ch, num_out_ch, scale=4, num_feat=64, num_block=23, num_grow_ch=32, prompt_dim=512, dcm=None
    ):
        super().__init__(
            num_in_ch, num_out_ch, scale=scale, num_feat=num_feat, num_block=num_block, num_grow_ch=num_grow_ch
        )
        self.add_prompt_guidance('body.*', prompt_dim, dcm, num_feat)

    def forward(self, x, prompt=None):
        return self._padded_forward(x, prompt, self.scale)


@ARCH_REGISTRY.register()
class SwinIRPlus(PromptGuidedMixin, SwinIR):
    """basicsr's SwinIR with one DCM after each residual Swin transformer block (RSTB, ``layers.0`` ...).

    Takes ``SwinIR``'s arguments by name (same parameter names: the official classical-SR checkpoints load with only
    ``dcms.*`` missing) plus ``prompt_dim`` (default 512) and ``dcm``. Each DCM sees the RSTB's tokens
    ``(B, H*W, embed_dim)`` as ``(B, embed_dim, H, W)``. ``forward(x, prompt)``: x (B, in_chans, h, w), prompt
    (B, prompt_dim) or None; returns (B, in_chans, upscale*h, upscale*w).
    """

    pads_input = True  # any input size (pdnsr.archs.plus_util.input_multiple)

    def __init__(self, prompt_dim=512, dcm=None, **kwargs):
        _check_base_options(SwinIR, kwargs, 'SwinIRPlus')
        super().__init__(**kwargs)
        self.add_prompt_guidance('layers.*', prompt_dim, dcm, channels_of(SwinIR, kwargs, None, 'SwinIRPlus'))
        self.window_size = kwargs.get(
            'window_size', inspect.signature(SwinIR.__init__).parameters['window_size'].default
        )

    def forward(self, x, prompt=None):
        """Pads h and w to multiples of ``window_size`` (reflection) and crops the output, as the official SwinIR does:
        basicsr's SwinIR needs such sizes and leaves the padding to its SwinIRModel, which PDNModel is not."""
        return self._padded_forward(x, prompt, self.upscale)

    # What inspect (option checks, pdnsr.options) reports: SwinIR's own named arguments, then prompt_dim and dcm.
    __init__.__signature__ = plus_signature(SwinIR)
