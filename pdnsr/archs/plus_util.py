"""Pieces shared by the prompt-guided ("+") networks: DCM options, supported scales, the common forward."""

import inspect

import torch
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
