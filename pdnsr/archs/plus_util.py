"""Pieces shared by the prompt-guided ("+") networks: DCM options, supported scales, the common forward, and what
input sizes a network needs (:func:`input_multiple`, :func:`pad_to_multiple`)."""

import inspect

import torch
from basicsr.archs.rrdbnet_arch import RRDBNet
from basicsr.archs.swinir_arch import SwinIR
from torch import nn

from pdnsr.archs.dcm_arch import DynamicCorrelationModule

SUPPORTED_SCALES = (2, 3, 4, 8, 16)

# Options a "+" network accepts under its `dcm:` key, with their defaults (the DCM's own signature).
DCM_OPTIONS = {
    name: p.default
    for name, p in inspect.signature(DynamicCorrelationModule.__init__).parameters.items()
    if name not in ('self', 'num_feat', 'prompt_dim')
}


def plus_signature(base_cls):
    """The constructor signature of a "+" network that takes ``base_cls``'s arguments (passed through ``*args,
    **kwargs``) plus ``prompt_dim`` and ``dcm``: what ``inspect`` reports, so option checks see every valid name."""
    params = [p for p in inspect.signature(base_cls.__init__).parameters.values() if p.kind is not p.VAR_KEYWORD]
    extra = [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d) for n, d in (('prompt_dim', 512), ('dcm', None))
    ]
    return inspect.signature(base_cls.__init__).replace(parameters=params + extra)


def base_input_multiple(net):
    """The multiple of h and w that the forward of ``net``'s basicsr class needs (1: any size).

    basicsr's RRDBNet pixel-unshuffles by 2 at scale 2 and by 4 at scale 1; its SwinIR cuts the image into windows of
    ``window_size`` (basicsr's SwinIRModel pads, the network does not). Every other network takes any size.
    """
    if isinstance(net, RRDBNet):
        return {2: 2, 1: 4}.get(net.scale, 1)
    if isinstance(net, SwinIR):
        return net.layers[0].residual_group.blocks[0].window_size  # SwinIR keeps it only in its blocks
    return 1


def input_multiple(net):
    """The multiple of h and w that ``net`` needs of its input, the one rule of pdnsr-infer, spandrel and the
    experiments: 1 for a network that pads itself (``pads_input``: RRDBNet+, SwinIR+), else
    :func:`base_input_multiple`."""
    return 1 if getattr(net, 'pads_input', False) else base_input_multiple(net)


def pad_to_multiple(x, multiple):
    """``x`` (B, C, h, w) padded at the bottom / right to multiples of ``multiple`` by reflection, as the official
    SwinIR and Real-ESRGAN inference do; an image too small to reflect (padding >= its side) by replication."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not (pad_h or pad_w):
        return x
    mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
    return torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def check_scale(upscale, network):
    """Raise ValueError for an upscale factor the networks do not support."""
    if upscale not in SUPPORTED_SCALES:
        raise ValueError(
            f'{network}: upscale={upscale!r} is not supported; use one of {list(SUPPORTED_SCALES)} '
            f'(powers of two are built from repeated x2 pixel-shuffle steps)'
        )


def make_dcms(count, num_feat, prompt_dim, dcm_opt, network):
    """``count`` DCMs built from a network's ``dcm`` option dict (None = defaults), as an ``nn.ModuleList``.

    An unknown key is a ValueError naming it and listing the valid ones, before anything is built.
    """
    dcm_opt = dict(dcm_opt or {})
    unknown = sorted(set(dcm_opt) - set(DCM_OPTIONS))
    if unknown:
        raise ValueError(
            f'{network}: unknown DCM option(s) {unknown} under network_g.dcm; valid options: {sorted(DCM_OPTIONS)}'
        )
    return nn.ModuleList(DynamicCorrelationModule(num_feat, prompt_dim, **dcm_opt) for _ in range(count))


def mean_as_buffer(module, rgb_mean):
    """Hold the RGB mean as a non-persistent buffer so that it follows ``.to(device)`` and never leaves the device.

    basicsr's EDSR / RCAN keep it as a plain attribute re-cast in every forward; as a buffer it is not in the
    state dict either, so checkpoints stay interchangeable with basicsr's.
    """
    if 'mean' in module.__dict__:
        del module.mean
    module.register_buffer('mean', torch.tensor(rgb_mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)


class PromptedHeadTailMixin:
    """Forward of basicsr's EDSR / RCAN layout with a prompt-aware body.

    The subclass provides ``forward_body(feat, prompt)``; head, global residual and tail are the baseline's.
    """

    def forward(self, x, prompt=None):
        """x: (B, 3, h, w) in [0, 1]; prompt: (B, prompt_dim) or None (zero prompt). Returns (B, 3, s*h, s*w)."""
        x = (x - self.mean) * self.img_range
        x = self.conv_first(x)
        res = self.conv_after_body(self.forward_body(x, prompt)) + x
        return self.conv_last(self.upsample(res)) / self.img_range + self.mean
