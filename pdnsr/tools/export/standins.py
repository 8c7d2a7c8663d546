"""Export-friendly stand-ins of the DCM, and the module that is traced into an ONNX graph.

The DCM's fast path (:mod:`pdnsr.archs.dcm_arch`) convolves each sample with its own kernel through one grouped
convolution (``groups`` = batch size) inside two autograd Functions. ONNX's ``Conv`` takes ``group`` as a static
attribute, so that cannot be exported with a dynamic batch. The stand-ins compute the same function with standard
operators, from what a trained DCM provides (they never re-implement its router or its folding):
``pi = dcm.kernel_weights(prompt)``, the folded bank ``(K, V) = dcm.folded_bank()``, the mask's linear maps
``dcm._attention_maps(prompt)``, ``zeta`` and ``bias``. With ``I = [M x; M]`` (the masked features and the mask,
c + 1 channels) the DCM's output is ``sum_k pi_k conv(I, [K_k | V_k]) + pi . b``:

- :class:`TwoInputDCM` (the prompt is a graph input): ``form='unfold'`` (default) mixes the bank per sample
  (``pi @ bank``: a (c, (c + 1) k^2) matrix per sample) and multiplies it with each pixel's k x k neighbourhood of
  ``I`` (zero-padded; laid out as channels by a one-hot grouped ``Conv``), one batched MatMul: the multiply-adds of
  one convolution. ``form='stacked'``: one ``Conv`` with
  the n bank kernels stacked (c + 1 -> n c channels), then the pi-weighted sum over n: n times the multiply-adds,
  but a convolution with constant weights. Both are exact; ``benchmarks/bench_onnx.py`` times them (docs/deploy.md).
- :class:`BakedDCM` (one prompt, fixed at export): pi, the mask's maps, ``zeta`` and the biases are constants,
  computed once in float64; the mask is a 1x1 ``Conv`` (c -> c + 2) and a few element-wise operators, the DCM one
  ``Conv`` (c + 1 -> c) with a bias.

The mask is computed in float32 whatever the graph's precision, as the DCM does (its Gram form cancels badly in
half precision).
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from pdnsr.archs.dcm_arch import _EPS, DynamicCorrelationModule, takes_prompt

FORMS = ('unfold', 'stacked')


def _mask(x, y, offset, const):
    """The attention mask ``M (B, 1, h, w)``: :class:`pdnsr.archs.dcm_arch._FoldedMask`'s forward in plain operators.

    ``x (B, c, h, w)``: features (float32+); ``y (B, c + 2, h, w)``: ``maps x``, rows ``G x``, ``v . x`` and
    ``zeta u . x`` (zeta folded into the numerator's row); ``offset``: ``zeta b_P . p_hat``, broadcastable to
    ``(B, 1, 1, 1)``; ``const``: ``|b_P|^2``.
    """
    c = x.shape[1]
    sq = (x * y[:, :c]).sum(1, keepdim=True) + y[:, c : c + 1] + const
    norm = sq.clamp_min(0).sqrt().clamp_min(_EPS)
    return torch.sigmoid((y[:, c + 1 :] + offset) / norm)


def _with_zeta(maps, offset, zeta):
    """``maps (B, c + 2, c)`` and ``offset (B, 1)`` with ``zeta`` folded into the numerator's row and offset."""
    c = maps.shape[-1]
    return torch.cat([maps[:, : c + 1], zeta * maps[:, c + 1 :]], 1), zeta * offset


def _patch_picker(channels, k, dtype):
    """The weight of a grouped convolution that lays out each pixel's k x k neighbourhood as channels (im2col):
    ``(channels k^2, 1, k, k)``, one-hot, so that ``conv2d(I, picker, padding=k // 2, groups=channels)`` is
    ``(B, channels k^2, h, w)`` ordered like the flattened ``(channels, k, k)`` of a convolution weight. onnxruntime
    runs it faster than k^2 slices of the padded input and their concatenation (measured once: the whole default
    EDSR+ x4 two-input graph at 128x128 took 0.90x the time, onnxruntime 1.32, 2 threads)."""
    return torch.eye(k * k, dtype=dtype).reshape(k * k, 1, k, k).repeat(channels, 1, 1, 1)


def _bank(dcm):
    """``[K_k | V_k]``: the folded bank acting on ``[M x; M]``, ``(n, c, c + 1, k, k)``."""
    kernel, mask_kernel = dcm.folded_bank()
    return torch.cat([kernel, mask_kernel[:, :, None]], 2).detach()


class TwoInputDCM(nn.Module):
    """A DCM for a graph whose prompt is an input: ``forward(x (B, c, h, w), prompt (B, d)) -> (B, c, h, w)``.

    Args:
        dcm (DynamicCorrelationModule): the trained DCM, in float32; kept as a submodule (its router and
            projection run in the graph).
        dtype (torch.dtype): the graph's precision (float32 or float16) for the features and the convolution.
        form (str): ``'unfold'`` or ``'stacked'`` (module docstring).
    """

    def __init__(self, dcm, dtype=torch.float32, form='unfold'):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f'two-input DCM form must be one of {list(FORMS)}, got {form!r}')
        self.dcm, self.form, self.num_feat = dcm, form, dcm.num_feat
        bank = _bank(dcm)
        n, c, _, k, _ = bank.shape
        if form == 'unfold':  # mixed per sample in float32, then cast: one (c, (c + 1) k^2) matrix per sample
            self.register_buffer('bank', bank.reshape(n, -1).float())
            self.register_buffer('picker', _patch_picker(c + 1, k, dtype))
        else:
            self.register_buffer('bank', bank.reshape(n * c, c + 1, k, k).to(dtype))

    def forward(self, x, prompt):
        dcm = self.dcm
        b, c, h, w = x.shape
        prompt = prompt.float()
        pi = dcm.kernel_weights(prompt)  # (B, n)
        if dcm.use_attention:
            maps, offset, const = dcm._attention_maps(prompt)  # (B, c + 2, c), (B, 1), ()
            maps, offset = _with_zeta(maps, offset, dcm.zeta)
            xf = x.float()
            y = torch.matmul(maps, xf.reshape(b, c, h * w)).reshape(b, c + 2, h, w)
            mask = _mask(xf, y, offset[:, :, None, None], const).to(x.dtype)
        else:  # e = f: the bias term still needs the "inside the image" indicator (zero padding)
            mask = torch.ones_like(x[:, :1])
        inp = torch.cat([mask * x, mask], 1)
        k = dcm.kernel_size
        if self.form == 'unfold':
            weight = (pi @ self.bank).to(x.dtype).reshape(b, c, -1)
            patches = F.conv2d(inp, self.picker, padding=k // 2, groups=c + 1).reshape(b, -1, h * w)
            out = torch.matmul(weight, patches).reshape(b, c, h, w)
        else:
            out = F.conv2d(inp, self.bank, padding=k // 2).reshape(b, -1, c, h, w)
            out = (out * pi.to(x.dtype)[:, :, None, None, None]).sum(1)
        return out + (pi @ dcm.bias).to(x.dtype)[:, :, None, None]


class BakedDCM(nn.Module):
    """A DCM with its prompt built in: ``forward(x (B, c, h, w), prompt ignored) -> (B, c, h, w)``.

    Args:
        dcm (DynamicCorrelationModule): the trained DCM (not modified).
        prompt (torch.Tensor): ``(1, d)``, the prompt every sample gets.
        dtype (torch.dtype): precision of the convolution (the mask stays float32).
    """

    def __init__(self, dcm, prompt, dtype=torch.float32):
        super().__init__()
        self.num_feat, self.padding, self.use_attention = dcm.num_feat, dcm.kernel_size // 2, dcm.use_attention
        wide = copy.deepcopy(dcm).double()  # constants in float64, rounded once to the graph's precision
        prompt = prompt.detach().double().reshape(1, -1)
        with torch.no_grad():
            pi = wide.kernel_weights(prompt)[0]  # (n,)
            self.register_buffer('weight', torch.einsum('n,nocij->ocij', pi, _bank(wide)).to(dtype))
            self.register_buffer('bias', (pi @ wide.bias).to(dtype))
            if dcm.use_attention:
                maps, offset, const = wide._attention_maps(prompt)
                maps, offset = _with_zeta(maps, offset, wide.zeta)
                self.register_buffer('maps', maps[0, :, :, None, None].float())  # a 1x1 conv c -> c + 2
                self.register_buffer('offset', offset.reshape(1, 1, 1, 1).float())
                self.register_buffer('const', const.float())

    def forward(self, x, prompt=None):
        if self.use_attention:
            xf = x.float()
            mask = _mask(xf, F.conv2d(xf, self.maps), self.offset, self.const).to(x.dtype)
        else:
            mask = torch.ones_like(x[:, :1])
        return F.conv2d(torch.cat([mask * x, mask], 1), self.weight, self.bias, padding=self.padding)


class ExportModule(nn.Module):
    """What is traced into the graph: a copy of ``net`` whose DCMs are stand-ins, in the graph's precision.

    ``forward(image (N, C, H, W) float32 [, prompt (N, d) float32]) -> (N, C', sH, sW) float32``: the prompt input
    exists for a two-input graph only (a prompt-guided ``net`` and ``prompt=None``).

    Args:
        net (torch.nn.Module): a pdnsr network (float32, eval); not modified.
        prompt (torch.Tensor | None): ``(1, d)``: bake this prompt into every DCM.
        dtype (torch.dtype): float32 or float16 (inputs and outputs stay float32).
        form (str): the two-input DCM's formulation (:data:`FORMS`).
    """

    def __init__(self, net, prompt=None, dtype=torch.float32, form='unfold'):
        super().__init__()
        paths = [name for name, m in net.named_modules() if isinstance(m, DynamicCorrelationModule)]
        self.prompted = takes_prompt(net)
        self.two_input = self.prompted and prompt is None
        self.dtype = dtype
        self.net = copy.deepcopy(net).eval().to(dtype)
        for path in paths:
            dcm = net.get_submodule(path)
            if self.two_input:
                standin = TwoInputDCM(copy.deepcopy(dcm).float().eval(), dtype, form)
            else:
                standin = BakedDCM(dcm, prompt, dtype)
            parent, _, name = path.rpartition('.')
            setattr(self.net.get_submodule(parent), name, standin)

    def forward(self, image, prompt=None):
        x = image.to(self.dtype)
        out = self.net(x, prompt) if self.prompted else self.net(x)
        return out.float()
