"""Super-resolve images with a trained pdnsr (or baseline) network: :class:`Upsampler`, the one inference object
that every front end uses (``pdnsr-infer``, ``pdnsr-export``, the attention figure, the experiment, the web page).

::

    up = Upsampler.from_checkpoint('net_g_latest.pth')                 # the network its checkpoint records
    sr = up.enhance(rgb, 'a zebra grazing on short green grass')      # (h, w, 3) uint8 RGB -> (s*h, s*w, 3)
    sr, masks = up.enhance(rgb, 'self', tile=256, attention=[0, -1])  # the image as its prompt; two DCMs' masks

It holds the network, the prompt encoder and image view its checkpoint records (CLIP is loaded on the first prompt
that needs it, and refused when it is not the model's), the scale, the tiling and the device. Underneath,
:func:`super_resolve` runs a network on a batch of tensors, whole or tile by tile. See ``docs/inference.md``.
"""

import functools
import os

import numpy as np
import torch
from basicsr.utils import get_root_logger

from pdnsr import provenance
from pdnsr.archs.dcm_arch import dcm_modules, kernel_cache, select_dcms, takes_prompt, type_takes_prompt
from pdnsr.archs.dcm_arch import keep_attention as set_keep_attention
from pdnsr.archs.network_options import build_network, check_network_options
from pdnsr.archs.plus_util import base_input_multiple, input_multiple, pad_to_multiple
from pdnsr.checkpoints import dcm_layout_of, fit_state_dict, read_checkpoint, state_dict_of
from pdnsr.errors import UserError
from pdnsr.models.run_checks import network_scale
from pdnsr.options import read_option_file
from pdnsr.prompts.encoder import RANDOM_TAGS, PromptEncoder, check_prompt_length

SELF_PROMPT = 'self'  # the prompt that is the input image itself (what image-prompt training uses)


# ---------------------------------------------------------------------------------------------------------------------
# networks and devices
def read_network_options(opt_path):
    """The ``network_g`` section of a basicsr option file (train or test YAML), checked against the registry.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a usable option file (:func:`pdnsr.options.read_option_file`), no ``network_g`` section,
            unknown ``type`` or options the type does not take.
    """
    opt_path = os.fspath(opt_path)
    opt = read_option_file(opt_path)
    opt_net = opt.get('network_g') if isinstance(opt, dict) else None
    if not isinstance(opt_net, dict):
        raise ValueError(
            f'option file {opt_path} has no network_g section (a mapping with type: and the network '
            f'arguments, as in a basicsr train/test option file)'
        )
    try:
        check_network_options(opt_net)
    except ValueError as err:
        raise ValueError(f'{opt_path}: {err}') from None
    return dict(opt_net)


def load_network(opt, weights_path, device=None, param_key=None):
    """``(network, record, network_g)``: the network with the weights of ``weights_path``, in eval mode on
    ``device`` (:func:`resolve_device`), the checkpoint's record of its prompts (:mod:`pdnsr.provenance`; None for
    an older or a basicsr checkpoint), and the ``network_g`` section it was built from.

    Args:
        opt (str | dict | None): an option file with the ``network_g`` section, the section itself, or None for the
            section the checkpoint records (every checkpoint pdnsr writes records it).
        param_key (str | None): ``'params'`` or ``'params_ema'`` (None: ``params_ema`` if saved, else ``params``,
            else a bare state dict).

    The DCM bank is read from the checkpoint: a compact-bank file (``scripts/convert_dcm_bank.py``) loads with the
    option file the model was trained with.

    Raises:
        FileNotFoundError, ValueError, UserError: one line naming the file and the first key that does not fit, or
            saying to pass the option file.
    """
    device = resolve_device(device) if device is None or isinstance(device, str) else device
    checkpoint = read_checkpoint(weights_path)
    state, used = state_dict_of(checkpoint, weights_path, param_key)
    record = provenance.of_checkpoint(checkpoint)
    if opt is None:
        opt_net = (record or {}).get('network_g')
        if not isinstance(opt_net, dict) or not opt_net.get('type'):
            raise UserError(
                f'weights file {weights_path} does not record its network (an older or a basicsr checkpoint): pass '
                'the option file it was trained with (--opt)'
            )
        opt_net, where = dict(opt_net), f'the network_g that {weights_path} records'
    elif isinstance(opt, dict):
        opt_net, where = dict(opt), 'network_g'
    else:
        opt_net, where = read_network_options(opt), os.fspath(opt)
    if dcm_layout_of(state)['bank'] == 'compact' and type_takes_prompt(opt_net['type']):
        opt_net['dcm'] = {**(opt_net.get('dcm') or {}), 'bank': 'compact'}
    net = build_network(opt_net, section=where)
    net.load_state_dict(fit_state_dict(net, state, weights_path, used), strict=True)
    return net.to(device).eval(), record, opt_net


def resolve_device(name=None):
    """torch.device from a name ('cpu', 'cuda', 'cuda:1'); None = cuda if available else cpu."""
    if name is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f'--device {name!r} is not a device name (use cpu or cuda)') from err
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError(f'--device {name}: no CUDA device is available here; use --device cpu')
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f'--device {name}: only {torch.cuda.device_count()} CUDA device(s) are available')
    elif device.type != 'cpu':
        raise ValueError(f'--device {name}: only cpu and cuda are supported')
    return device


# ---------------------------------------------------------------------------------------------------------------------
# prompt encoders
def prompt_encoder_for(record, prompt_dim, clip_model=None, clip_pretrained=None, device='cpu', force=False, warn=None):
    """The CLIP encoder of the embedding space a model was trained in, for encoding its prompts (shared:
    :func:`cached_prompt_encoder`).

    Args:
        record (dict | None): the checkpoint's record (:func:`load_network`); None for an older checkpoint.
        prompt_dim (int): the network's prompt size.
        clip_model, clip_pretrained (str | None): what the user named (``--clip-model`` / ``--clip-pretrained``);
            None: the record's (``ViT-B-32`` / ``openai`` without a record).
        device: where CLIP runs.
        force (bool): ``--force-encoder``: an encoder other than the record's only warns.
        warn (callable | None): where warnings go (default basicsr's logger).

    Raises:
        UserError: the named encoder is not the model's (checked before CLIP is loaded: a file is hashed), or the
            model's weights are a file the user has to name.
        pdnsr.prompts.encoder.WeightsUnavailable: the weights cannot be loaded (the message says what to do).
        ValueError: the embedding size differs from ``prompt_dim`` (naming both).
    """
    trained = (record or {}).get('prompt_encoder')
    warn = warn or get_root_logger().warning
    if trained is None:
        warn(
            'the checkpoint does not record the prompt encoder it was trained with (an older or a basicsr '
            'checkpoint): prompts are encoded with '
            f'{clip_model or "ViT-B-32"} / {clip_pretrained or "openai"}; make sure that is the one it was trained with'
        )
    model_name = clip_model or (trained or {}).get('model_name') or 'ViT-B-32'
    weights = (trained or {}).get('weights', 'openai')
    seed = int(weights.rsplit('-', 1)[1]) if weights.startswith('random-seed-') else 0
    if clip_pretrained is None:
        if weights.startswith(('sha256:', 'file:')):
            raise UserError(
                f'the model was trained on prompts of {provenance.describe(trained)}, a local CLIP checkpoint: pass '
                'that file with --clip-pretrained /path/to/open_clip_model.bin'
            )
        clip_pretrained = 'none' if weights.startswith('random-seed-') else weights
    given = provenance.encoder_record(
        {'model_name': model_name, 'pretrained': clip_pretrained, 'random_init_seed': seed}
    )
    provenance.check_same_space(
        trained, given, 'the model', f'--clip-model {model_name} --clip-pretrained {clip_pretrained}', force, warn
    )
    encoder = cached_prompt_encoder(model_name, clip_pretrained, device, seed)
    if encoder.embed_dim != prompt_dim:
        raise ValueError(
            f'CLIP model {model_name} makes prompt embeddings of size {encoder.embed_dim} but the '
            f'network was built with prompt_dim={prompt_dim}; pass the --clip-model the network was '
            f'trained with'
        )
    return encoder


@functools.lru_cache(maxsize=2)
def _encoder(model_name, pretrained, weights, device, seed):
    return PromptEncoder(model_name, pretrained=pretrained, device=device, seed=seed)


def cached_prompt_encoder(model_name, pretrained, device='cpu', seed=0):
    """``PromptEncoder(model_name, pretrained, device, seed=seed)``, built once while it is among the last two used.

    A notebook, the tests or a script that encodes prompts for several models loads CLIP (seconds, ~600 MB for
    ViT-B-32) once. The key holds :func:`pdnsr.provenance.weights_id`, so a weights file rewritten in place is
    loaded again. The encoder is shared: do not change its attributes. ``cache_info()`` / ``cache_clear()`` are
    ``functools.lru_cache``'s.
    """
    random = pretrained in RANDOM_TAGS
    pretrained = 'none' if random else os.fspath(pretrained)
    weights = provenance.weights_id(pretrained) if os.path.isfile(pretrained) else None  # a file: by its content
    return _encoder(model_name, pretrained, weights, str(torch.device(device)), int(seed) if random else 0)


cached_prompt_encoder.cache_info = _encoder.cache_info
cached_prompt_encoder.cache_clear = _encoder.cache_clear


# ---------------------------------------------------------------------------------------------------------------------
# super-resolution of tensors
_BASELINE = object()  # sentinel: the network takes no prompt (None already means "zero prompt")


class OutOfMemory(UserError, MemoryError):
    """The device ran out of memory on an image; the message says which tile size to use instead."""


def is_out_of_memory(err):
    """True for the errors of an allocation that failed: CUDA's ``OutOfMemoryError``, the CPU allocator's
    ``RuntimeError`` ("can't allocate memory"), a ``MemoryError``."""
    if isinstance(err, (MemoryError, getattr(torch, 'OutOfMemoryError', MemoryError))):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("can't allocate memory" in text or 'out of memory' in text)


def check_tile_options(tile, tile_pad, names=('tile', 'tile_pad')):
    """``tile``: a positive integer or None; ``tile_pad``: an integer >= 0. ``names`` name them in the ValueError."""
    if tile is not None and (int(tile) != tile or tile < 1):
        raise ValueError(f'{names[0]} must be a positive integer or None, got {tile!r}')
    if int(tile_pad) != tile_pad or tile_pad < 0:
        raise ValueError(f'{names[1]} must be an integer >= 0, got {tile_pad!r}')


def super_resolve(net, lq, prompt=None, tile=None, tile_pad=32, keep_attention=False, scale=None):
    """Super-resolve a batch of images, whole or tile by tile, of any size.

    A network that needs input sides of some multiple (:func:`~pdnsr.archs.plus_util.input_multiple`: basicsr's
    SwinIR its window size, its RRDBNet 2 at x2 and 4 at x1) gets the image, or each tile, reflection-padded at the
    bottom / right and its output cropped back, as the "+" networks RRDBNet+ / SwinIR+ do themselves.

    Args:
        net (torch.nn.Module): a "+" network (``forward(lq, prompt)``, has ``prompt_dim``) or a baseline
            (``forward(lq)``; ``prompt`` is then ignored).
        lq (torch.Tensor): (B, 3, h, w) float in [0, 1], on the network's device.
        prompt (torch.Tensor | None): (B, d) prompt embeddings, or None for the zero prompt.
        tile (int | None): side of the LR tiles; None runs the whole image at once.
        tile_pad (int): LR pixels of context around each tile (clipped at the image border); the padded part of
            the output is cropped away. Exact when it covers the network's receptive field and the network has no
            global operation (RCAN's channel attention pools over the whole tile, so RCAN tiles differ slightly).
        keep_attention (bool): also return the attention masks of every DCM.
        scale (int | None): upscale factor; None infers it from the output.

    Returns:
        torch.Tensor: ``sr`` (B, 3, s*h, s*w), float32, clamped to [0, 1]; or ``(sr, masks)`` when
        ``keep_attention``, with ``masks = {dcm_index: (B, 1, h, w) float32}`` stitched across tiles.

    Raises:
        OutOfMemory: the device ran out of memory; the message names the image size and a tile size to use.
    """
    if lq.dim() != 4:
        raise ValueError(f'super_resolve: lq must be (B, C, h, w), got shape {tuple(lq.shape)}')
    check_tile_options(tile, tile_pad)
    if not takes_prompt(net):
        prompt = _BASELINE
    elif prompt is not None:
        prompt = prompt.to(device=lq.device, dtype=lq.dtype)
    dcms = dcm_modules(net) if keep_attention else []

    was_training = net.training
    net.eval()
    if keep_attention:
        set_keep_attention(net, True)
    try:
        with torch.no_grad(), kernel_cache(net):  # one call: every tile reuses each DCM's prompt-mixed kernels
            if tile is None:
                sr, factor, masks = _run(net, lq, prompt, dcms, scale)
                sr, masks = sr.float(), {i: m.float() for i, m in masks.items()}
            else:
                sr, masks = _forward_tiled(net, lq, prompt, dcms, int(tile), int(tile_pad), scale)
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        if lq.is_cuda:
            torch.cuda.empty_cache()  # what the failed call held, for the next image
        h, w = lq.shape[-2:]
        smaller = max(16, (tile or min(512, max(h, w))) // 2)
        raise OutOfMemory(
            f'out of memory super-resolving a {w}x{h} image on {lq.device}'
            + (f' in tiles of {tile}' if tile else '')
            + f'; use tiles of {smaller} (--tile {smaller}): a smaller tile needs less memory'
        ) from None
    finally:
        if keep_attention:
            set_keep_attention(net, False)
        net.train(was_training)
    sr = sr.clamp_(0, 1)
    return (sr, masks) if keep_attention else sr


def _run(net, lq, prompt, dcms, scale):
    """``(sr, factor, masks)``: the network on ``lq`` (B, C, h, w), padded to what it needs
    (:func:`~pdnsr.archs.plus_util.input_multiple`, reflection); ``sr`` cropped back to ``factor`` times (h, w);
    ``masks``: ``{i: mask}`` of the ``dcms`` that made one, cropped to (h, w) when the base ran at LR resolution on
    a padded input (padded here or by the network itself); a mask at another resolution keeps its size."""
    h, w = lq.shape[-2:]
    padded = pad_to_multiple(lq, input_multiple(net))
    out = net(padded) if prompt is _BASELINE else net(padded, prompt)
    factor = _check_scale(out, padded, scale)
    m = base_input_multiple(net)
    ran_on = (h + -h % m, w + -w % m)
    masks = {}
    for i, dcm in enumerate(dcms):
        mask = dcm.last_attention  # None for a DCM built with use_attention: false
        if mask is not None:
            masks[i] = mask[..., :h, :w] if tuple(mask.shape[-2:]) == ran_on else mask
    return out[..., : h * factor, : w * factor], factor, masks


def _check_scale(out, inp, scale):
    """The integer factor between ``out`` and ``inp`` (B, C, h, w), checked against ``scale`` if given."""
    h, w = inp.shape[-2:]
    factor = out.shape[-2] // h
    if out.shape[-2] != factor * h or out.shape[-1] != factor * w or (scale is not None and factor != scale):
        want = f'the expected scale={scale}' if scale is not None else 'an integer multiple of the input size'
        raise ValueError(
            f'super_resolve: the network turned a {h}x{w} input into {out.shape[-2]}x{out.shape[-1]}, not {want}'
        )
    return factor


def _forward_tiled(net, lq, prompt, dcms, tile, pad, scale):
    """One network call per tile, the whole batch at once; each padded result is cropped and pasted."""
    b, _, h, w = lq.shape
    sr = masks = None
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            py0, px0, py1, px1 = max(y0 - pad, 0), max(x0 - pad, 0), min(y1 + pad, h), min(x1 + pad, w)
            patch = lq[:, :, py0:py1, px0:px1]
            out, scale, patch_masks = _run(net, patch, prompt, dcms, scale)
            if sr is None:
                sr = lq.new_empty(b, out.shape[1], h * scale, w * scale, dtype=torch.float32)
                masks = {i: lq.new_empty(b, 1, h, w, dtype=torch.float32) for i in patch_masks}
            ty, tx, s = y0 - py0, x0 - px0, scale  # the tile's offset inside the padded patch, in LR pixels
            sr[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = out[
                :, :, ty * s : (ty + y1 - y0) * s, tx * s : (tx + x1 - x0) * s
            ]
            for i in masks:
                mask = patch_masks[i]
                if mask.shape[-2:] != patch.shape[-2:]:
                    raise ValueError(
                        f'super_resolve: DCM {i} works at {tuple(mask.shape[-2:])} for an input of '
                        f'{tuple(patch.shape[-2:])}; tiled attention needs DCMs at LR resolution'
                    )
                masks[i][:, :, y0:y1, x0:x1] = mask[:, :, ty : ty + y1 - y0, tx : tx + x1 - x0]
    return sr, masks


def image_to_tensor(rgb, device):
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 in [0, 1] on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div_(255).to(device)


def tensor_to_rgb(t):
    """(1, 3, H, W) or (3, H, W) float in [0, 1] -> (H, W, 3) uint8 RGB."""
    t = t.detach().float().cpu().squeeze(0).clamp(0, 1)
    return np.ascontiguousarray((t.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8))


def as_rgb(image):
    """An image array as (H, W, 3) uint8 RGB: grey (H, W) or (H, W, 1) repeated, RGBA's alpha dropped.

    Raises:
        ValueError: not an 8-bit image array of 1, 3 or 4 channels, or empty.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ValueError(f'an image must be an (H, W, 3) uint8 RGB array, got {image.dtype} of shape {image.shape}')
    if 0 in image.shape[:2]:
        raise ValueError(f'the image is empty ({image.shape[1]}x{image.shape[0]} pixels)')
    if image.ndim == 2 or image.shape[2] == 1:
        return np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


# ---------------------------------------------------------------------------------------------------------------------
# the inference object
class Upsampler:
    """A trained network ready to super-resolve images with prompts.

    Args:
        net (torch.nn.Module): a "+" network or a baseline (or anything with their forward, e.g. an ONNX graph run
            by onnxruntime), in eval mode.
        record (dict | None): its checkpoint's record (:mod:`pdnsr.provenance`): the prompt encoder, image view and
            ``network_g`` it was trained with; None for an older or a basicsr checkpoint.
        device (str | torch.device | None): where it runs (default cuda if available, else cpu).
        tile (int | None): default LR tile side of :meth:`enhance` (None: whole images).
        tile_pad (int): LR context pixels around each tile.
        half (bool): float16 autocast (CUDA only).
        clip_model, clip_pretrained (str | None): the CLIP to encode prompts with (None: the one the checkpoint
            records); another one than the model's is refused unless ``force_encoder``.
        warn (callable | None): where warnings go (default basicsr's logger).
        view (str | None): the image view of image prompts (default the one of the training prompts the checkpoint
            records, else flip).
        network_g (dict | None): the section ``net`` was built from (default the record's).
    """

    def __init__(self, net, record=None, device=None, tile=None, tile_pad=32, half=False, clip_model=None,
                 clip_pretrained=None, force_encoder=False, warn=None, view=None, network_g=None):  # fmt: skip
        self.device = resolve_device(device) if device is None or isinstance(device, str) else device
        check_tile_options(tile, tile_pad, ('--tile', '--tile-pad'))
        if half and self.device.type != 'cuda':
            raise ValueError(f'--fp16 needs a CUDA device; the device is {self.device}. Drop --fp16 to run in float32')
        self.net, self.record = net.to(self.device).eval(), record
        self.tile, self.tile_pad, self.half = tile, tile_pad, half
        self.network_g = network_g or (record or {}).get('network_g')
        self.clip_model, self.clip_pretrained, self.force_encoder = clip_model, clip_pretrained, force_encoder
        self.warn = warn or get_root_logger().warning
        self.view = view or (self.trained_encoder or {}).get('view') or 'flip'
        self._scale = network_scale(self.network_g) if isinstance(self.network_g, dict) else None
        self._encoder = None

    @classmethod
    def from_checkpoint(cls, weights, opt=None, device=None, param_key=None, **kwargs):
        """The Upsampler of a checkpoint file (:func:`load_network`): ``opt`` an option file with ``network_g``,
        the section itself, or None for the one the checkpoint records; other arguments as the class's."""
        device = resolve_device(device) if device is None or isinstance(device, str) else device
        net, record, network_g = load_network(opt, weights, device, param_key)
        return cls(net, record, device, network_g=network_g, **kwargs)

    # ------------------------------------------------------------------ what the model is
    @property
    def takes_prompt(self):
        """bool: a "+" network (it reads a prompt); False for a baseline."""
        return takes_prompt(self.net)

    @property
    def prompt_dim(self):
        return getattr(self.net, 'prompt_dim', None)

    @property
    def trained_encoder(self):
        """dict | None: the encoder record of the prompts the model was trained on (:mod:`pdnsr.provenance`)."""
        return (self.record or {}).get('prompt_encoder')

    @property
    def scale(self):
        """int | None: the upscale factor (None until known: a network whose options do not say it)."""
        return self._scale

    @property
    def encoder(self):
        """The CLIP encoder of the model's embedding space (:func:`prompt_encoder_for`), loaded on first use."""
        if self._encoder is None:
            clip = (self.clip_model, self.clip_pretrained, self.device, self.force_encoder, self.warn)
            self._encoder = prompt_encoder_for(self.record, self.prompt_dim, *clip)
        return self._encoder

    def attention_dcms(self, indices=True, option='attention'):
        """The sorted DCM indices of ``indices`` (``True``: first and last; negative from the end) whose masks
        :meth:`enhance` can return. Raises ValueError for a network without masks or an index out of range."""
        dcms = dcm_modules(self.net)
        if not dcms:
            raise ValueError(f'{option}: {type(self.net).__name__} has no DCM (a baseline has no attention masks)')
        if not all(m.use_attention for m in dcms):
            raise ValueError(
                f'{option}: the DCMs of this network were built with use_attention: false; there are no attention '
                'masks to save'
            )
        return sorted(select_dcms(self.net, indices, option))

    # ------------------------------------------------------------------ prompts
    def check_prompt(self, text):
        """Refuse a text prompt longer than CLIP reads, before CLIP is loaded (only its tokenizer is built)."""
        check_prompt_length(text, self.clip_model or (self.trained_encoder or {}).get('model_name'))

    def encode(self, prompt, image=None):
        """The (1, d) embedding of one prompt (float32, CPU), or None for no prompt (the zero prompt).

        Args:
            prompt: None; a text (str); ``'self'`` (:data:`SELF_PROMPT`): ``image`` itself; an image array ((H, W,
                3) uint8 RGB, encoded in :attr:`view`); or an embedding tensor of ``prompt_dim`` numbers.
            image: the input image, for ``'self'``.

        Returns None for a baseline network (with a warning when a prompt was given: it is ignored).
        """
        if prompt is None:
            return None
        if not self.takes_prompt:
            self.warn(f'{type(self.net).__name__} is a baseline network; the prompt is ignored')
            return None
        if isinstance(prompt, torch.Tensor):
            if prompt.numel() != self.prompt_dim or not bool(torch.isfinite(prompt).all()):
                raise ValueError(
                    f'a prompt embedding must hold {self.prompt_dim} finite numbers, got shape {tuple(prompt.shape)}'
                )
            return prompt.detach().float().reshape(1, -1).cpu()
        if isinstance(prompt, str) and prompt != SELF_PROMPT:
            self.check_prompt(prompt)
            return self.encoder.encode_text([prompt])
        if isinstance(prompt, str):
            if image is None:
                raise ValueError("the prompt 'self' is the input image: give the image")
            prompt = image
        return self.encoder.encode_images([as_rgb(prompt)], view=self.view)

    def encode_texts(self, texts, keys=None):
        """(n, d) embeddings of n texts in batches (a captions file); ``keys`` name them in warnings."""
        return self.encoder.encode_text(list(texts), keys=keys)

    # ------------------------------------------------------------------ super-resolution
    def enhance_many(self, image, prompts, tile=..., attention=False):
        """Super-resolve one image under several prompts in one batch; a list with one result per prompt.

        Args:
            image: (H, W, 3) uint8 RGB (grey and RGBA are converted, :func:`as_rgb`).
            prompts (list): what :meth:`encode` takes, per prompt (embeddings already encoded too).
            tile (int | None): LR tile side (default the Upsampler's).
            attention (bool | list[int]): also return attention masks: True for every DCM, or DCM indices.

        Returns:
            list: the SR images ((s*H, s*W, 3) uint8 RGB), or ``(sr, {dcm index: (H, W) float32 mask})`` pairs.
        """
        rgb = as_rgb(image)
        tile = self.tile if tile is ... else tile
        check_tile_options(tile, self.tile_pad, ('--tile', '--tile-pad'))
        chosen = None
        if attention is not False:
            every = list(range(len(dcm_modules(self.net))))
            chosen = self.attention_dcms(every if attention is True else attention)
        embs = [self.encode(p, rgb) for p in prompts]
        prompt = None
        if any(e is not None for e in embs):
            prompt = torch.cat([torch.zeros(1, self.prompt_dim) if e is None else e for e in embs])
            prompt = prompt.to(self.device)
        lq = image_to_tensor(rgb, self.device).expand(len(prompts), -1, -1, -1)
        with torch.autocast('cuda', dtype=torch.float16, enabled=self.half):
            result = super_resolve(self.net, lq, prompt, tile, self.tile_pad, chosen is not None, self._scale)
        sr, masks = result if chosen is not None else (result, None)
        self._scale = sr.shape[-2] // rgb.shape[0]
        outputs = [tensor_to_rgb(sr[i]) for i in range(len(prompts))]
        if chosen is None:
            return outputs
        return [(out, {j: masks[j][i, 0].cpu().numpy() for j in chosen if j in masks}) for i, out in enumerate(outputs)]

    def enhance(self, image, prompt=None, tile=..., attention=False):
        """:meth:`enhance_many` of one prompt: the SR image, or ``(sr, masks)`` with ``attention``."""
        return self.enhance_many(image, [prompt], tile, attention)[0]
