"""The Dynamic Correlation Module (DCM) of the Prompt-guided Dynamic Network.

Given a feature map ``x: (B, c, h, w)`` and a prompt embedding ``p: (B, d)`` the module computes

1. ``f = P x + b_P``                                   (``proj``: 1x1 conv c -> d)
2. ``M = sigmoid(zeta * <f / |f|, p / |p|>)``          (one value per pixel, ``(B, 1, h, w)``)
3. ``e = M * f``
4. ``pi = softmax(router(p) / T)``; ``W = sum_k pi_k W_k``, ``b = sum_k pi_k b_k``; output ``conv(e, W) + b``.

The host network adds the output residually: ``x = x + dcm(x, p)``.

Two implementations of the same function live here. ``forward_literal`` follows the equations and materialises
the d-channel tensor ``f``. ``forward`` (the default, used by every network) never builds ``f``: the mask and the
convolution are linear in ``x`` except for the per-pixel scalar ``M``, so the projection can be folded into the
mask's dot products (through ``P^T p`` and the Gram matrix ``P^T P``) and into the kernel bank (``W_k o P``). See
``docs/dcm.md`` for the derivation and the cost.

A zero prompt is allowed and gives finite output: ``p / |p|`` is zero, so the mask is 0.5 everywhere and the kernel
mixture is the one the router gives for a zero input (its biases). ``None`` means the same as a zero prompt.
"""

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

# Norms below this are treated as zero: the mask of a zero feature vector or a zero prompt is sigmoid(0).
_EPS = 1e-6


def _wide(dtype):
    """float64 stays float64; half types are widened to float32 for norms and dot products."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class DynamicCorrelationModule(nn.Module):
    """Prompt-guided attention + dynamic convolution on a feature map.

    Args:
        num_feat (int): channels c of the feature map (in and out).
        prompt_dim (int): size d of the prompt embedding (512 for CLIP ViT-B/32).
        num_kernels (int): n, basis kernels mixed by the router. Default 4.
        kernel_size (int): k of the dynamic convolution (odd). Default 3.
        router_hidden (int): hidden width of the router MLP d -> hidden -> n. Default 128.
        use_attention (bool): False drops the mask (paper's "w/o att"): ``e = f``.
        use_dynamic (bool): False uses one static kernel and no router (paper's "w/o dy").
        temperature (float): initial softmax temperature T of the router. Default 34.
        init_scale (float): scale of the basis kernels' initialisation relative to PyTorch's conv default, kept
            small so that a DCM inserted into a pretrained backbone starts close to the identity residual.
    """

    def __init__(
        self,
        num_feat,
        prompt_dim,
        num_kernels=4,
        kernel_size=3,
        router_hidden=128,
        use_attention=True,
        use_dynamic=True,
        temperature=34.0,
        init_scale=0.1,
    ):
        super().__init__()
        for name, value in (
            ('num_feat', num_feat),
            ('prompt_dim', prompt_dim),
            ('num_kernels', num_kernels),
            ('router_hidden', router_hidden),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'DynamicCorrelationModule: {name} must be a positive integer, got {value!r}')
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f'DynamicCorrelationModule: kernel_size must be a positive odd integer, got {kernel_size!r}'
            )
        if temperature <= 0:
            raise ValueError(f'DynamicCorrelationModule: temperature must be > 0, got {temperature!r}')
        self.num_feat = num_feat
        self.prompt_dim = prompt_dim
        self.kernel_size = kernel_size
        self.use_attention = use_attention
        self.use_dynamic = use_dynamic
        self.num_kernels = num_kernels if use_dynamic else 1

        self.proj = nn.Conv2d(num_feat, prompt_dim, 1)
        if use_attention:
            self.zeta = nn.Parameter(torch.tensor(50.0))
        if use_dynamic:
            self.router = nn.Sequential(
                nn.Linear(prompt_dim, router_hidden), nn.ReLU(inplace=True), nn.Linear(router_hidden, num_kernels)
            )
        self.weight = nn.Parameter(torch.empty(self.num_kernels, num_feat, prompt_dim, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(self.num_kernels, num_feat))
        # T is state, not a parameter: saved in state_dict (so checkpoints carry it) but never trained or averaged.
        self.register_buffer('temperature', torch.tensor(float(temperature)))
        self.reset_parameters(init_scale)

        # Visualisation: the last mask is kept only while someone asked for it (see ``keep_attention``).
        self.keep_attention = False
        self.last_attention = None

    def reset_parameters(self, init_scale=0.1):
        fan_in = self.prompt_dim * self.kernel_size**2
        bound = init_scale / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self):
        return (
            f'num_feat={self.num_feat}, prompt_dim={self.prompt_dim}, num_kernels={self.num_kernels}, '
            f'kernel_size={self.kernel_size}, use_attention={self.use_attention}, '
            f'use_dynamic={self.use_dynamic}'
        )

    def set_temperature(self, value):
        """Set the router's softmax temperature T (> 0). No effect on the output when ``use_dynamic`` is False."""
        if value <= 0:
            raise ValueError(f'DCM temperature must be > 0, got {value!r}')
        self.temperature.fill_(float(value))

    # ------------------------------------------------------------------ shared pieces
    def _check_inputs(self, x, prompt):
        if x.dim() != 4 or x.shape[1] != self.num_feat:
            raise ValueError(f'DCM expects features of shape (B, {self.num_feat}, h, w), got {tuple(x.shape)}')
        if prompt is None:
            return x.new_zeros(x.shape[0], self.prompt_dim)
        if prompt.dim() != 2 or prompt.shape[1] != self.prompt_dim:
            raise ValueError(
                f'prompt embedding has size {prompt.shape[-1] if prompt.dim() else 0} '
                f'(shape {tuple(prompt.shape)}) but the network was built with prompt_dim='
                f'{self.prompt_dim}: use a prompt store / CLIP model of the same size or change '
                f'prompt_dim in network_g'
            )
        if prompt.shape[0] != x.shape[0]:
            raise ValueError(
                f'prompt batch size {prompt.shape[0]} differs from image batch size {x.shape[0]}: '
                f'give one prompt embedding per image'
            )
        return prompt.to(x.dtype)

    def kernel_weights(self, prompt):
        """Mixing weights pi of the basis kernels, ``(B, n)``; all ones for ``use_dynamic=False`` (n = 1)."""
        if not self.use_dynamic:
            return prompt.new_ones(prompt.shape[0], 1)
        logits = self.router(prompt)
        return torch.softmax(logits / self.temperature.to(logits.dtype), dim=1)

    def _unit_prompt(self, prompt):
        # At least float32: under fp16 autocast the squared norm of a 512-vector can overflow.
        return F.normalize(prompt.to(_wide(prompt.dtype)), dim=1, eps=_EPS)

    def _keep(self, mask):
        if self.keep_attention:
            self.last_attention = mask.detach()

    @staticmethod
    def _per_sample_conv(inp, weight, padding):
        """Convolve sample i of ``inp (B, Ci, h, w)`` with ``weight[i] (Co, Ci, k, k)``; one grouped conv, no loop."""
        b, ci, h, w = inp.shape
        out = F.conv2d(
            inp.reshape(1, b * ci, h, w), weight.reshape(-1, ci, *weight.shape[-2:]), padding=padding, groups=b
        )
        return out.reshape(b, -1, h, w)

    # ------------------------------------------------------------------ literal Eq. 2-4 (reference)
    def forward_literal(self, x, prompt):
        """Eq. 2-4 as written, building the d-channel projection. Reference for tests; slow. Shapes as forward."""
        prompt = self._check_inputs(x, prompt)
        f = self.proj(x)  # (B, d, h, w)
        if self.use_attention:
            cos = (
                F.normalize(f.to(_wide(f.dtype)), dim=1, eps=_EPS) * self._unit_prompt(prompt)[:, :, None, None]
            ).sum(1, True)
            mask = torch.sigmoid(self.zeta * cos).to(x.dtype)  # (B, 1, h, w)
            self._keep(mask)
            f = mask * f
        pi = self.kernel_weights(prompt)  # (B, n)
        weight = torch.einsum('bn,nodij->bodij', pi, self.weight)  # (B, c, d, k, k)
        out = self._per_sample_conv(f, weight, self.kernel_size // 2)
        return out + (pi @ self.bias)[:, :, None, None]

    # ------------------------------------------------------------------ exact folded fast path (default)
    def forward(self, x, prompt):
        """DCM output for features ``x (B, c, h, w)`` and prompts ``prompt (B, d)`` (or None); returns (B, c, h, w).

        Exact rewrite of :meth:`forward_literal` that never materialises the d-channel projection.
        """
        prompt = self._check_inputs(x, prompt)
        b, c, h, w = x.shape
        pad = self.kernel_size // 2
        proj_w = self.proj.weight.reshape(self.prompt_dim, c)  # P: (d, c)
        proj_b = self.proj.bias  # b_P: (d,)

        if self.use_attention:
            mask = self._attention_folded(x, prompt, proj_w, proj_b)  # (B, 1, h, w)
            self._keep(mask)
            masked_x = mask * x
        else:
            # e = f: the folded bias term still needs an "inside the image" indicator because of zero padding.
            mask = x.new_ones(b, 1, h, w)
            masked_x = x

        pi = self.kernel_weights(prompt)  # (B, n)
        # Fold the projection into each basis kernel once (cost independent of B, h, w), then mix per sample.
        folded = torch.einsum('nodij,dc->nocij', self.weight, proj_w)  # W_k o P: (n, c, c, k, k)
        folded_bias = torch.einsum('nodij,d->noij', self.weight, proj_b)  # W_k b_P: (n, c, k, k)
        weight = torch.einsum('bn,nocij->bocij', pi, folded)  # (B, c, c, k, k)
        weight_b = torch.einsum('bn,noij->boij', pi, folded_bias).reshape(b, c, -1)  # (B, c, k*k)
        out = self._per_sample_conv(masked_x, weight, pad)
        # The bias path conv(M, W b_P) + b has one input channel: a k*k-wide batched matmul over the unfolded mask
        # is far cheaper than a grouped convolution (whose kernels are slow for one channel, or for c + 1 channels
        # when it is appended to the main convolution).
        patches = F.unfold(mask, self.kernel_size, padding=pad)  # (B, k*k, h*w)
        bias_map = torch.baddbmm((pi @ self.bias).unsqueeze(2), weight_b, patches)  # (B, c, h*w)
        return out + bias_map.view(b, c, h, w)

    def _attention_folded(self, x, prompt, proj_w, proj_b):
        """M = sigmoid(zeta * cos(P x + b_P, p)) from c-dimensional quantities only; returns (B, 1, h, w).

        Numerator ``x . (P^T p_hat) + b_P . p_hat``; squared norm ``x^T G x + 2 (P^T b_P) . x + |b_P|^2`` with
        ``G = P^T P``. The three linear maps of ``x`` (``G``, ``P^T p_hat``, ``2 P^T b_P``) are stacked into one
        per-sample ``(c + 2, c)`` matrix so that a single batched matmul reads ``x`` once. Computed in float32 or
        wider (the Gram form cancels badly in half precision) and clamped at zero, because rounding can make the
        expanded square slightly negative.
        """
        b, c, h, w = x.shape
        wide = _wide(x.dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.to(wide).reshape(b, c, h * w)
            pw = proj_w.to(wide)
            pb = proj_b.to(wide)
            unit_p = self._unit_prompt(prompt).to(wide)  # (B, d)
            shared = torch.cat([pw.t() @ pw, 2 * (pw.t() @ pb)[None]], 0)  # [G; 2 P^T b_P]: (c + 1, c)
            maps = torch.cat([shared.expand(b, c + 1, c), (unit_p @ pw)[:, None]], 1)  # (B, c + 2, c)
            y = torch.bmm(maps, xf)  # (B, c + 2, h*w)
            sq = (xf * y[:, :c]).sum(1) + y[:, c] + pb.dot(pb)
            num = y[:, c + 1] + (unit_p @ pb)[:, None]
            cos = num / sq.clamp_min(0).sqrt().clamp_min(_EPS)
            mask = torch.sigmoid(self.zeta.to(wide) * cos)
        return mask.reshape(b, 1, h, w).to(x.dtype)


def dcm_modules(net):
    """All DCMs inside ``net`` (looks inside DataParallel / DDP wrappers too), in definition order."""
    return [m for m in net.modules() if isinstance(m, DynamicCorrelationModule)]


def takes_prompt(net):
    """True when ``net`` (or the network inside a DataParallel / DDP wrapper) is called as ``net(lq, prompt)``.

    The one rule: prompt-guided networks declare their prompt size as ``prompt_dim``; baselines have none.
    """
    return getattr(getattr(net, 'module', net), 'prompt_dim', None) is not None


def type_takes_prompt(net_type):
    """:func:`takes_prompt` for a registered network type, before building it: its constructor takes ``prompt_dim``."""
    from basicsr.utils.registry import ARCH_REGISTRY

    return 'prompt_dim' in inspect.signature(ARCH_REGISTRY.get(net_type).__init__).parameters


def select_dcms(net, indices, option='DCM index'):
    """{index: DCM} for ``indices`` into :func:`dcm_modules` (negative counts from the end; ``True`` = first and
    last). An index out of range is a ValueError that names ``option`` and the valid range."""
    dcms = dcm_modules(net)
    if not dcms:
        return {}
    indices = [0, -1] if indices is True else list(indices)
    chosen = {}
    for i in indices:
        if not isinstance(i, int) or not -len(dcms) <= i < len(dcms):
            raise ValueError(
                f'{option}: DCM index {i!r} out of range; the network has {len(dcms)} DCMs '
                f'(indices 0..{len(dcms) - 1}, negative from the end)'
            )
        chosen[i % len(dcms)] = dcms[i]
    return chosen


def set_dcm_temperature(net, value):
    """Set the router temperature of every DCM in ``net``; returns how many DCMs were found."""
    modules = dcm_modules(net)
    for m in modules:
        m.set_temperature(value)
    return len(modules)


def keep_attention(net, enabled=True):
    """Make every DCM in ``net`` keep (or drop) its last attention mask, for visualisation."""
    for m in dcm_modules(net):
        m.keep_attention = enabled
        if not enabled:
            m.last_attention = None
