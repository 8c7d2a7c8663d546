"""Super-resolve images with a trained pdnsr (or baseline) network: the library behind ``pdnsr-infer``.

::

    net = build_network_from_options('options/test_rcan_x4.yml')     # the network_g section
    load_weights(net, 'experiments/.../net_g_latest.pth')              # params_ema, else params
    sr = super_resolve(net, lq, prompt, tile=128)                      # lq (B, 3, h, w) in [0, 1]

The command line is :mod:`pdnsr.infer_cli` (see ``docs/inference.md``).
"""

import functools
import os

import numpy as np
import torch
import yaml
from basicsr.archs import build_network
from basicsr.utils import get_root_logger
from basicsr.utils.options import ordered_yaml

from pdnsr import provenance
from pdnsr.archs.dcm_arch import dcm_modules, kernel_cache, takes_prompt, type_takes_prompt
from pdnsr.archs.dcm_arch import keep_attention as set_keep_attention
from pdnsr.archs.network_options import check_network_options
from pdnsr.archs.plus_util import base_input_multiple, input_multiple, pad_to_multiple
from pdnsr.checkpoints import dcm_layout_of, fit_state_dict, read_checkpoint, state_dict_of
from pdnsr.data.image_files import read_rgb, write_image
from pdnsr.errors import UserError
from pdnsr.prompts.encoder import RANDOM_TAGS, PromptEncoder

__all__ = [
    'build_network_from_options',
    'cached_prompt_encoder',
    'check_tile_options',
    'image_to_tensor',
    'load_network',
    'load_weights',
    'prompt_encoder_for',
    'read_network_options',
    'read_rgb',
    'resolve_device',
    'super_resolve',
    'tensor_to_bgr',
    'write_png',
]

# The atomic image writer under the name the scripts and the demo use (the suffix of the path picks the format).
write_png = write_image


# ---------------------------------------------------------------------------------------------------------------------
# network and weights


def read_network_options(opt_path):
    """The ``network_g`` section of a basicsr option file (train or test YAML), checked against the registry.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not YAML, no ``network_g`` section, unknown ``type`` or options the type does not take.
    """
    opt_path = os.fspath(opt_path)
    if not os.path.isfile(opt_path):
        raise FileNotFoundError(f'option file {opt_path} does not exist')
    try:
        with open(opt_path, encoding='utf-8') as f:
            opt = yaml.load(f, Loader=ordered_yaml()[0])
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f'option file {opt_path} is not valid YAML: {" ".join(str(err).split())}') from err
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


def build_network_from_options(opt_path, opt_net=None):
    """The network of the ``network_g`` section of ``opt_path`` (or of ``opt_net`` read from it), on the CPU, with
    freshly initialised weights. Raises as :func:`read_network_options`, and ValueError when building fails."""
    opt_net = opt_net or read_network_options(opt_path)
    try:
        return build_network(dict(opt_net))  # basicsr deep-copies and pops 'type'; our dict stays as read
    except (TypeError, ValueError) as err:
        raise ValueError(f'{opt_path}: cannot build network_g: {err}') from err


def load_weights(net, weights_path):
    """Load a checkpoint into ``net`` (strict, :func:`pdnsr.checkpoints.fit_state_dict`: ``params_ema`` else
    ``params`` else a bare state dict; a paper-bank file converted for a compact network).

    Returns:
        str: the key used: 'params_ema', 'params' or 'state_dict' (bare).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, or weights that do not fit ``net``; the message names the file and the first
            mismatching key (missing, unexpected, or its two shapes) or the DCM option to set.
    """
    state, used = state_dict_of(read_checkpoint(weights_path), weights_path)
    net.load_state_dict(fit_state_dict(net, state, weights_path, used), strict=True)
    return used


def load_network(opt_path, weights_path, device=None, param_key=None):
    """(network, device, record): the network of ``opt_path``'s ``network_g`` with the weights of ``weights_path``,
    in eval mode on ``device`` (:func:`resolve_device`), and the checkpoint's record of its prompts
    (:mod:`pdnsr.provenance`; None for an older or a basicsr checkpoint). ``param_key``: the weights to take,
    ``'params'`` or ``'params_ema'`` (None: ``params_ema`` if saved, else ``params``, else a bare state dict).

    The DCM bank is read from the checkpoint: a compact-bank file (``scripts/convert_dcm_bank.py``) loads with the
    option file the model was trained with.
    """
    device = resolve_device(device) if device is None or isinstance(device, str) else device
    opt_net = read_network_options(opt_path)
    checkpoint = read_checkpoint(weights_path)
    state, used = state_dict_of(checkpoint, weights_path, param_key)
    if dcm_layout_of(state)['bank'] == 'compact' and type_takes_prompt(opt_net['type']):
        opt_net['dcm'] = {**(opt_net.get('dcm') or {}), 'bank': 'compact'}
    net = build_network_from_options(opt_path, opt_net)
    net.load_state_dict(fit_state_dict(net, state, weights_path, used), strict=True)
    return net.to(device).eval(), device, provenance.of_checkpoint(checkpoint)


# ---------------------------------------------------------------------------------------------------------------------
# super-resolution
_BASELINE = object()  # sentinel: the network takes no prompt (None already means "zero prompt")


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


def check_tile_options(tile, tile_pad, names=('super_resolve: tile', 'tile_pad')):
    """``tile``: a positive integer or None; ``tile_pad``: an integer >= 0. ``names`` name them in the ValueError."""
    if tile is not None and (int(tile) != tile or tile < 1):
        raise ValueError(f'{names[0]} must be a positive integer or None, got {tile!r}')
    if int(tile_pad) != tile_pad or tile_pad < 0:
        raise ValueError(f'{names[1]} must be an integer >= 0, got {tile_pad!r}')


def _tile_starts(size, tile):
    """Start offsets of tiles of length ``tile`` covering ``size`` (the last one may be shorter)."""
    return list(range(0, size, tile))


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
                sr, masks = _forward_whole(net, lq, prompt, dcms, scale)
            else:
                sr, masks = _forward_tiled(net, lq, prompt, dcms, int(tile), int(tile_pad), scale)
    finally:
        if keep_attention:
            set_keep_attention(net, False)
        net.train(was_training)
    sr = sr.clamp_(0, 1)
    return (sr, masks) if keep_attention else sr


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


def _forward_whole(net, lq, prompt, dcms, scale):
    sr, _, masks = _run(net, lq, prompt, dcms, scale)
    return sr.float(), {i: m.float() for i, m in masks.items()}


def _forward_tiled(net, lq, prompt, dcms, tile, pad, scale):
    """One network call per tile, the whole batch at once; each padded result is cropped and pasted."""
    b, _, h, w = lq.shape
    sr = masks = None
    for y0 in _tile_starts(h, tile):
        for x0 in _tile_starts(w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            py0, px0, py1, px1 = max(y0 - pad, 0), max(x0 - pad, 0), min(y1 + pad, h), min(x1 + pad, w)
            patch = lq[:, :, py0:py1, px0:px1]
            out, scale, patch_masks = _run(net, patch, prompt, dcms, scale)
            if sr is None:
                sr = lq.new_empty(b, out.shape[1], h * scale, w * scale, dtype=torch.float32)
                masks = {i: lq.new_empty(b, 1, h, w, dtype=torch.float32) for i in patch_masks}
            # Offsets of the tile inside the padded patch, in LR pixels.
            ty, tx = y0 - py0, x0 - px0
            s = scale
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


# ---------------------------------------------------------------------------------------------------------------------
# helpers shared by the CLI and scripts/visualize_attention.py
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


def image_to_tensor(rgb, device):
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 in [0, 1] on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div_(255).to(device)


def tensor_to_bgr(t):
    """(1, 3, H, W) or (3, H, W) float in [0, 1] -> (H, W, 3) uint8 BGR for cv2."""
    t = t.detach().float().cpu().squeeze(0).clamp(0, 1)
    rgb = (t.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(rgb[..., ::-1])
