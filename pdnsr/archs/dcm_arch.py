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

Two layouts of the parameters (``bank``) give the same family of functions. ``'paper'`` stores the kernel bank
``W: (n, c, d, k, k)`` as the paper writes it and folds ``P`` into it at every forward. ``'compact'`` stores what the
network actually uses, ``K_k = W_k o P: (n, c, c, k, k)`` (``kernel``), ``V_k = W_k b_P: (n, c, k, k)``
(``mask_kernel``) and ``b_k`` (``bias``); ``proj`` then only serves the mask. For d >= c every (K, V) is reachable,
so nothing is lost; a paper checkpoint converts exactly (:func:`convert_state_dict_to_compact`).

Inside :func:`kernel_cache` (one inference call: the tiles of an image) the prompt-mixed kernels are computed once per
prompt and reused; the parameters must not change inside the block, and outside it nothing is cached.

A zero prompt is allowed and gives finite output: ``p / |p|`` is zero, so the mask is 0.5 everywhere and the kernel
mixture is the one the router gives for a zero input (its biases). ``None`` means the same as a zero prompt.
"""

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

# Layouts of the kernel bank (see the module docstring).
BANKS = ('paper', 'compact')
# What the router reads: 'scaled' (the default), the unit prompt times sqrt(d), entries of order 1; 'paper', the
# prompt as it is (entries ~1/sqrt(d)), the paper's literal router (docs/dcm.md, "The router's scale").
ROUTERS = ('scaled', 'paper')
# The state-dict key (under a DCM's prefix) that only a router of that kind has; the paper's router has none. A
# checkpoint therefore says which router it was trained with (pdnsr.checkpoints refuses to load it into the other).
ROUTER_MARKERS = {'scaled': 'router_scale'}

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
        bank (str): ``'paper'`` (default; ``weight (n, c, d, k, k)`` as in the paper, folded with ``proj`` at every
            forward) or ``'compact'`` (``kernel (n, c, c, k, k)``, ``mask_kernel (n, c, k, k)``: the folded bank
            stored directly, the same functions with ~5x fewer parameters and nothing to fold).
        router (str): what the router reads: ``'scaled'`` (default; the unit prompt times sqrt(d), so that its
            entries are of order 1 and a caption difference reaches the kernel mixture) or ``'paper'`` (the prompt as
            it is, entries ~1/sqrt(d): the paper's literal router, whose mixture barely follows the prompt while the
            temperature is high; docs/dcm.md).
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
        bank='paper',
        router='scaled',
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
        for name, value in (('use_attention', use_attention), ('use_dynamic', use_dynamic)):
            if not isinstance(value, bool):
                raise ValueError(
                    f'DynamicCorrelationModule: {name} must be true or false, got {value!r} (a '
                    f'{type(value).__name__}); write {name}: false without quotes under network_g.dcm'
                )
        for name, value in (('temperature', temperature), ('init_scale', init_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f'DynamicCorrelationModule: {name} must be a number > 0, got {value!r}')
        if bank not in BANKS:
            raise ValueError(f'DynamicCorrelationModule: bank must be one of {list(BANKS)}, got {bank!r}')
        if router not in ROUTERS:
            raise ValueError(f'DynamicCorrelationModule: router must be one of {list(ROUTERS)}, got {router!r}')
        self.router_kind = router
        self.num_feat = num_feat
        self.prompt_dim = prompt_dim
        self.kernel_size = kernel_size
        self.use_attention = use_attention
        self.use_dynamic = use_dynamic
        self.num_kernels = num_kernels if use_dynamic else 1
        self.bank = bank

        n, c, k = self.num_kernels, num_feat, kernel_size
        # The compact bank needs the projection for the mask only; the paper's bank always folds it in.
        if use_attention or bank == 'paper':
            self.proj = nn.Conv2d(num_feat, prompt_dim, 1)
        if use_attention:
            self.zeta = nn.Parameter(torch.tensor(50.0))
        if use_dynamic:
            self.router = nn.Sequential(
                nn.Linear(prompt_dim, router_hidden), nn.ReLU(inplace=True), nn.Linear(router_hidden, num_kernels)
            )
            if router == 'scaled':
                # A buffer holding sqrt(d) marks the checkpoint's router (ROUTER_MARKERS). The forward multiplies by
                # the Python float instead: exact in every dtype, and no float64 tensor (which MPS cannot hold).
                self.register_buffer('router_scale', torch.tensor(math.sqrt(prompt_dim)))
        if bank == 'paper':
            self.weight = nn.Parameter(torch.empty(n, c, prompt_dim, k, k))
        else:
            self.kernel = nn.Parameter(torch.empty(n, c, c, k, k))
            self.mask_kernel = nn.Parameter(torch.empty(n, c, k, k))
        self.bias = nn.Parameter(torch.empty(n, c))
        # T is state, not a parameter: saved in state_dict (so checkpoints carry it) but never trained or averaged.
        self.register_buffer('temperature', torch.tensor(float(temperature)))
        self.reset_parameters(init_scale)

        # Visualisation: the last mask is kept only while someone asked for it (see ``keep_attention``).
        self.keep_attention = False
        self.last_attention = None
        # Prompt-mixed kernels reused inside a :func:`kernel_cache` block ({key: (prompt, kernels)}), else None.
        self._kernel_cache = None

    def reset_parameters(self, init_scale=0.1):
        """Uniform in +-init_scale / sqrt(fan_in): the basis kernels start small, the DCM near a zero residual.

        The compact bank uses the fan-in of its own c-channel kernels, which gives its folded kernels about the
        spread the paper layout's ``W o P`` has at initialisation.
        """
        fan_in = (self.prompt_dim if self.bank == 'paper' else self.num_feat) * self.kernel_size**2
        bound = init_scale / math.sqrt(fan_in)
        for param in self._bank_parameters():
            nn.init.uniform_(param, -bound, bound)

    def _bank_parameters(self):
        if self.bank == 'paper':
            return [self.weight, self.bias]
        return [self.kernel, self.mask_kernel, self.bias]

    def extra_repr(self):
        return (
            f'num_feat={self.num_feat}, prompt_dim={self.prompt_dim}, num_kernels={self.num_kernels}, '
            f'kernel_size={self.kernel_size}, use_attention={self.use_attention}, '
            f'use_dynamic={self.use_dynamic}, bank={self.bank!r}, router={self.router_kind!r}'
        )

    def set_temperature(self, value):
        """Set the router's softmax temperature T (> 0). No effect on the output when ``use_dynamic`` is False."""
        if value <= 0:
            raise ValueError(f'DCM temperature must be > 0, got {value!r}')
        self.temperature.fill_(float(value))

    # ------------------------------------------------------------------ shared pieces
    def _check_inputs(self, x, prompt):
        """Raise ValueError for features or a prompt of the wrong shape, naming both sizes."""
        if x.dim() != 4 or x.shape[1] != self.num_feat:
            raise ValueError(f'DCM expects features of shape (B, {self.num_feat}, h, w), got {tuple(x.shape)}')
        if prompt is None:
            return
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

    def _prompt_for(self, x, prompt):
        """The prompt as used with features ``x``: a zero prompt for None, else in ``x``'s dtype."""
        return x.new_zeros(x.shape[0], self.prompt_dim) if prompt is None else prompt.to(x.dtype)

    def kernel_weights(self, prompt):
        """Mixing weights pi of the basis kernels, ``(B, n)``; all ones for ``use_dynamic=False`` (n = 1)."""
        if not self.use_dynamic:
            return prompt.new_ones(prompt.shape[0], 1)
        logits = self.router(self._router_input(prompt))
        return torch.softmax(logits / self.temperature.to(logits.dtype), dim=1)

    def _router_input(self, prompt):
        """What the router reads: the prompt itself (``paper``), or its unit vector times sqrt(d) (``scaled``), whose
        entries are of order 1 whatever the prompt's norm; a zero prompt stays zero."""
        if self.router_kind == 'paper':
            return prompt
        return (self._unit_prompt(prompt) * math.sqrt(self.prompt_dim)).to(prompt.dtype)

    def _unit_prompt(self, prompt):
        # At least float32: under fp16 autocast the squared norm of a 512-vector can overflow.
        return F.normalize(prompt.to(_wide(prompt.dtype)), dim=1, eps=_EPS)

    def _keep(self, mask):
        if self.keep_attention:
            self.last_attention = mask.detach()

    @staticmethod
    def _per_sample_conv(inp, weight, padding, bias=None):
        """Convolve sample i of ``inp (B, Ci, h, w)`` with ``weight[i] (Co, Ci, k, k)`` (+ ``bias[i] (Co,)``); one
        grouped conv, no loop."""
        b, ci, h, w = inp.shape
        out = F.conv2d(
            inp.reshape(1, b * ci, h, w),
            weight.reshape(-1, ci, *weight.shape[-2:]),
            None if bias is None else bias.reshape(-1),
            padding=padding,
            groups=b,
        )
        return out.reshape(b, -1, h, w)

    # ------------------------------------------------------------------ literal Eq. 2-4 (reference)
    def forward_literal(self, x, prompt):
        """Eq. 2-4 as written, building the d-channel projection. Reference for tests; slow. Shapes as forward.

        Only the paper's layout has a d-channel bank to write the equations with; convert a compact module's
        reference by building the paper module it came from (:func:`convert_state_dict_to_compact`).
        """
        if self.bank != 'paper':
            raise ValueError("forward_literal needs bank='paper' (the compact bank has no d-channel kernels)")
        self._check_inputs(x, prompt)
        prompt = self._prompt_for(x, prompt)
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
        self._check_inputs(x, prompt)
        b, _, h, w = x.shape
        kernel, mask_kernel, bias, mask_maps = self.mixed_kernels(prompt, x)

        if self.use_attention:
            mask = self._attention_folded(x, mask_maps)  # (B, 1, h, w)
            self._keep(mask)
        else:
            # e = f: the folded bias term still needs an "inside the image" indicator because of zero padding.
            mask = x.new_ones(b, 1, h, w)
        return _DynamicConv.apply(x, mask, kernel, mask_kernel, bias, self.kernel_size // 2)

    def folded_bank(self):
        """The bank the network uses, ``(K (n, c, c, k, k), V (n, c, k, k))``: ``K_k = W_k o P``, ``V_k = W_k b_P``.

        Stored as such by the compact bank; folded from ``weight`` and ``proj`` for the paper's (cost independent of
        the batch and the image size, but paid at every training forward).
        """
        if self.bank == 'compact':
            return self.kernel, self.mask_kernel
        proj_w = self.proj.weight.reshape(self.prompt_dim, self.num_feat)
        return (
            torch.einsum('nodij,dc->nocij', self.weight, proj_w),
            torch.einsum('nodij,d->noij', self.weight, self.proj.bias),
        )

    def mixed_kernels(self, prompt, x):
        """Everything of one forward that depends on the prompt and the parameters only, not on the image.

        ``prompt``: (B, d) or None (a zero prompt); ``x``: the features it goes with (batch size, dtype, device).

        Returns ``(kernel (B, c, c, k, k), mask_kernel (B, c, k*k), bias (B, c), mask_maps)``: the router's mixture
        of the folded bank and of the biases, and the inputs of the attention mask (None without attention).

        Inside :func:`kernel_cache` (eval mode, autograd off: the tiles of one image) the result is computed once
        per prompt tensor (identity and in-place version, the caller's tensor before any dtype conversion), batch
        size, dtype, device and autocast state, and reused; outside it, never.
        """
        cache = self._kernel_cache if not self.training and not torch.is_grad_enabled() else None
        if cache is not None:
            device_type = x.device.type
            autocast = torch.is_autocast_enabled(device_type)
            key = (
                None if prompt is None else (id(prompt), prompt._version),
                *(x.shape[0], x.dtype, x.device, autocast),
                torch.get_autocast_dtype(device_type) if autocast else None,
            )
            if key in cache:
                return cache[key][1]
        given = prompt
        prompt = self._prompt_for(x, prompt)
        pi = self.kernel_weights(prompt)  # (B, n)
        kernel, mask_kernel = self.folded_bank()
        b = x.shape[0]
        result = (
            torch.einsum('bn,nocij->bocij', pi, kernel),
            torch.einsum('bn,noij->boij', pi, mask_kernel).reshape(b, self.num_feat, -1),
            pi @ self.bias,
            self._attention_maps(prompt) if self.use_attention else None,
        )
        if cache is not None:
            cache[key] = (given, result)  # the prompt is held, so no other tensor can take its id meanwhile
        return result

    def _attention_maps(self, prompt):
        """Per-sample linear maps of the mask, ``(maps (B, c + 2, c), offset (B, 1), const ())``, in float32+.

        The mask's numerator is ``x . (P^T p_hat) + b_P . p_hat`` and its squared norm ``x^T G x + 2 (P^T b_P) . x +
        |b_P|^2`` with ``G = P^T P``: the three linear maps of ``x`` (``G``, ``2 P^T b_P``, ``P^T p_hat``) are
        stacked so that one batched matmul reads ``x`` once.
        """
        c = self.num_feat
        wide = _wide(prompt.dtype if prompt.dtype == torch.float64 else self.proj.weight.dtype)
        with torch.autocast(device_type=prompt.device.type, enabled=False):
            pw = self.proj.weight.reshape(self.prompt_dim, c).to(wide)
            pb = self.proj.bias.to(wide)
            unit_p = self._unit_prompt(prompt).to(wide)  # (B, d)
            shared = torch.cat([pw.t() @ pw, 2 * (pw.t() @ pb)[None]], 0)  # [G; 2 P^T b_P]: (c + 1, c)
            maps = torch.cat([shared.expand(prompt.shape[0], c + 1, c), (unit_p @ pw)[:, None]], 1)
            return maps, (unit_p @ pb)[:, None], pb.dot(pb)

    def _attention_folded(self, x, mask_maps):
        """M = sigmoid(zeta * cos(P x + b_P, p)) from c-dimensional quantities only; returns (B, 1, h, w).

        ``mask_maps`` comes from :meth:`_attention_maps`. Computed in float32 or wider (the Gram form cancels badly
        in half precision) by :class:`_FoldedMask`, whose hand-written backward keeps no (c + 2)-channel
        intermediate.
        """
        b, c, h, w = x.shape
        maps, offset, const = mask_maps
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.to(maps.dtype).reshape(b, c, h * w)
            mask = _FoldedMask.apply(xf, maps, offset, const, self.zeta.to(maps.dtype))
        return mask.reshape(b, 1, h, w).to(x.dtype)


class _DynamicConv(torch.autograd.Function):
    """The folded dynamic convolution ``conv(M x, K_i) + conv(M, V_i) + b_i`` per sample, saving only its inputs.

    ``conv(M x, K_i) + b_i`` is one grouped convolution (groups = B, the bias in the convolution's own bias). The
    term ``conv(M, V_i)`` has one input channel: a k*k-wide batched matmul over the unfolded mask, accumulated into
    the output, is far cheaper than a grouped convolution (whose kernels are slow for one channel, or for c + 1
    channels when it is appended to the main convolution).

    Autograd of the same ops would also keep ``M x`` (a full c-channel tensor per DCM) and the unfolded mask
    (k*k channels); ``x`` and ``M`` are kept anyway (the mask needs them), so both are recomputed in the backward
    pass instead, which cuts a DCM's saved activations by about half. Under autocast the convolutions run in the
    autocast dtype; the backward pass recomputes in that dtype and returns gradients in the inputs' dtypes.
    """

    @staticmethod
    def forward(ctx, x, mask, kernel, mask_kernel, bias, padding):
        """x: (B, c, h, w); mask: (B, 1, h, w); kernel: (B, o, c, k, k); mask_kernel: (B, o, k*k); bias: (B, o)."""
        b, _, h, w = x.shape
        out = DynamicCorrelationModule._per_sample_conv(mask * x, kernel, padding, bias)
        k = kernel.shape[-1]
        patches = F.unfold(mask.to(out.dtype), k, padding=padding)  # (B, k*k, h*w)
        out = torch.baddbmm(out.view(b, -1, h * w), mask_kernel.to(out.dtype), patches).view(b, -1, h, w)
        ctx.save_for_backward(x, mask, kernel, mask_kernel)
        ctx.padding, ctx.conv_dtype, ctx.bias_dtype = padding, out.dtype, bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, mask, kernel, mask_kernel = ctx.saved_tensors
        b, c, h, w = x.shape
        k, pad, dtype = kernel.shape[-1], ctx.padding, ctx.conv_dtype
        grad_out = grad_out.to(dtype)
        weight = kernel.to(dtype).reshape(-1, c, k, k)
        grad_in, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out.reshape(1, -1, h, w),
            (mask * x).to(dtype).reshape(1, b * c, h, w),
            weight,
            [weight.shape[0]],
            [1, 1],
            [pad, pad],
            [1, 1],
            False,
            [0, 0],
            b,
            [ctx.needs_input_grad[0] or ctx.needs_input_grad[1], ctx.needs_input_grad[2], ctx.needs_input_grad[4]],
        )
        dx = dmask = dmask_kernel = None
        flat = grad_out.view(b, -1, h * w)
        if ctx.needs_input_grad[3]:
            patches = F.unfold(mask.to(dtype), k, padding=pad)
            dmask_kernel = torch.bmm(flat, patches.transpose(1, 2)).to(mask_kernel.dtype)
        if grad_in is not None:
            grad_in = grad_in.view(b, c, h, w)
            dx = (grad_in * mask).to(x.dtype) if ctx.needs_input_grad[0] else None
            if ctx.needs_input_grad[1]:
                from_bias = F.fold(torch.bmm(mask_kernel.to(dtype).transpose(1, 2), flat), (h, w), k, padding=pad)
                dmask = ((grad_in * x).sum(1, keepdim=True) + from_bias).to(mask.dtype)
        dkernel = grad_w.view(kernel.shape).to(kernel.dtype) if grad_w is not None else None
        dbias = grad_b.view(b, -1).to(ctx.bias_dtype) if grad_b is not None else None
        return dx, dmask, dkernel, dmask_kernel, dbias, None


class _FoldedMask(torch.autograd.Function):
    """The attention mask from the stacked maps of :meth:`DynamicCorrelationModule._attention_maps`.

    Forward, per sample and pixel (``x``: c-vector, ``G``, ``v``, ``u``: the rows of ``maps``)::

        y = maps x;  sq = x . (G x) + v . x + const;  norm = max(sqrt(max(sq, 0)), eps)
        cos = (u . x + offset) / norm;  M = sigmoid(zeta cos)

    Backward (G is symmetric): with ``dsq`` and ``dnum`` the gradients of ``sq`` and of the numerator,
    ``dx = maps^T [2 x dsq; dsq; dnum]`` and ``dmaps = [x dsq; dsq; dnum] x^T``: two batched matmuls and no saved
    ``y``. Autograd of the same forward keeps ``y`` ((c + 2) channels) alive and zero-fills a full-size gradient for
    each of its three slices. Tested against autograd in float64.
    """

    @staticmethod
    def forward(ctx, x, maps, offset, const, zeta):
        """x: (B, c, N); maps: (B, c + 2, c); offset: (B, 1); const, zeta: (); returns M: (B, N)."""
        c = x.shape[1]
        y = torch.bmm(maps, x)
        sq = (x * y[:, :c]).sum(1).add_(y[:, c]).add_(const)
        norm = sq.clamp_min(0).sqrt_().clamp_min_(_EPS)
        cos = (y[:, c + 1] + offset).div_(norm)
        mask = torch.sigmoid(zeta * cos)
        ctx.save_for_backward(x, maps, zeta, cos, norm, mask)
        return mask

    @staticmethod
    def backward(ctx, grad_mask):
        x, maps, zeta, cos, norm, mask = ctx.saved_tensors
        dz = grad_mask * mask * (1 - mask)  # d/d(zeta cos)
        dzeta = (dz * cos).sum() if ctx.needs_input_grad[4] else None
        dnum = dz * zeta / norm
        # d norm / d sq = 1 / (2 norm) where the clamps let sq through, else 0.
        dsq = torch.where(norm > _EPS, -dnum * cos / (2 * norm), torch.zeros_like(norm))
        stacked = torch.cat([x * (2 * dsq).unsqueeze(1), dsq.unsqueeze(1), dnum.unsqueeze(1)], 1)  # (B, c + 2, N)
        dx = torch.bmm(maps.transpose(1, 2), stacked) if ctx.needs_input_grad[0] else None
        dmaps = None
        if ctx.needs_input_grad[1]:
            dmaps = torch.bmm(stacked, x.transpose(1, 2))
            dmaps[:, : x.shape[1]] *= 0.5  # the G rows: d(x . G x) / dG = x x^T (the 2 above was for dx)
        doffset = dnum.sum(1, keepdim=True) if ctx.needs_input_grad[2] else None
        dconst = dsq.sum() if ctx.needs_input_grad[3] else None
        return dx, dmaps, doffset, dconst, dzeta


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
    from pdnsr.archs.network_options import network_parameters

    return 'prompt_dim' in network_parameters(net_type)


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


@contextlib.contextmanager
def kernel_cache(net):
    """Let every DCM of ``net`` reuse its prompt-mixed kernels across the forward calls inside the block (eval mode,
    autograd off), e.g. the tiles of one image under one prompt.

    Parameters and the temperature must not change inside the block: nothing checks them (writes through ``.data``,
    as basicsr's EMA makes, would go unnoticed by any version counter). Outside a block every call computes afresh.
    Nested blocks keep the outer one's entries.
    """
    dcms = dcm_modules(net)
    saved = [d._kernel_cache for d in dcms]
    for d, old in zip(dcms, saved):
        d._kernel_cache = {} if old is None else old
    try:
        yield
    finally:
        for d, old in zip(dcms, saved):
            d._kernel_cache = old


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


def convert_state_dict_to_compact(state_dict):
    """A state dict whose paper-layout DCMs are rewritten in the compact layout, exactly; returns (new, count).

    For every DCM (found by its ``<prefix>.weight`` of shape ``(n, c, d, k, k)`` beside ``<prefix>.proj.weight``)
    ``kernel = W o P`` and ``mask_kernel = W b_P`` are computed in float64 and stored in the bank's dtype; ``proj``
    is kept when the DCM has an attention mask (``<prefix>.zeta``) and dropped otherwise; biases, router,
    ``zeta`` and the temperature are copied. Every other entry is copied unchanged, in order. Build the network
    with ``dcm: {bank: compact}`` to load the result.
    """
    banks = [  # prefixes of the paper-layout DCMs, e.g. 'dcms.3.'
        key[: -len('weight')]
        for key, value in state_dict.items()
        if key.endswith('weight') and value.dim() == 5 and f'{key[: -len("weight")]}proj.bias' in state_dict
    ]
    dropped = {f'{p}proj.{n}' for p in banks if f'{p}zeta' not in state_dict for n in ('weight', 'bias')}
    out = {}
    for key, value in state_dict.items():
        if key in dropped:
            continue  # without attention the compact DCM has no projection
        prefix = key[: -len('weight')]
        if prefix not in banks or not key.endswith('weight'):
            out[key] = value
            continue
        weight = value.double()
        proj_w = state_dict[prefix + 'proj.weight'].double().flatten(1)  # (d, c)
        proj_b = state_dict[prefix + 'proj.bias'].double()
        out[prefix + 'kernel'] = torch.einsum('nodij,dc->nocij', weight, proj_w).to(value.dtype)
        out[prefix + 'mask_kernel'] = torch.einsum('nodij,d->noij', weight, proj_b).to(value.dtype)
    return out, len(banks)
