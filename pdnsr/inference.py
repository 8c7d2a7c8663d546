"""Super-resolve images with a trained pdnsr (or baseline) network: library functions and the ``pdnsr-infer`` CLI.

Library::

    net = build_network_from_options('options/test_rcan_x4.yml')     # the network_g section
    load_weights(net, 'experiments/.../net_g_latest.pth')              # params_ema, else params
    sr = super_resolve(net, lq, prompt, tile=128)                      # lq (B, 3, h, w) in [0, 1]

CLI (see ``docs/inference.md``)::

    python scripts/inference_pdnsr.py --opt options/test_rcan_x4.yml --weights model.pth \\
        --input datasets/benchmarks/Set5/LRx4 --output results/set5 --prompt "a baby wearing a knitted hat"
"""

import argparse
import os
import sys
import warnings

import cv2
import numpy as np
import torch
import yaml
from basicsr.archs import build_network
from basicsr.utils.options import ordered_yaml
from tqdm import tqdm

from pdnsr.archs.dcm_arch import dcm_modules
from pdnsr.archs.dcm_arch import keep_attention as set_keep_attention
from pdnsr.models.pdn_model import check_network_options
from pdnsr.prompts.build import IMAGE_SUFFIXES, image_key, load_captions, scan_images
from pdnsr.prompts.encoder import RANDOM_TAGS, VIEWS, PromptEncoder
from pdnsr.utils.visualization import overlay_heatmap

NO_PROMPT_WARNING = (
    'no prompt given (--prompt, --prompt-image or --captions): running with a zero prompt, i.e. a uniform 0.5 '
    'attention mask and the router bias mixture of kernels. The output is finite but this is not what the network '
    'was trained on; expect lower quality.'
)


# ---------------------------------------------------------------------------------------------------------------------
# network and weights
SELF_PROMPT = 'self'


def build_network_from_options(opt_path):
    """Build the network described by the ``network_g`` section of a basicsr option file (train or test YAML).

    Args:
        opt_path (str): YAML file with a ``network_g`` mapping (``type: RCANPlus`` and its arguments).

    Returns:
        torch.nn.Module: the network, on the CPU, with freshly initialised weights.

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
        return build_network(dict(opt_net))  # basicsr deep-copies and pops 'type'; our dict stays as read
    except KeyError as err:
        # basicsr's registry says "No object named 'X' found in 'arch' registry!"
        raise ValueError(
            f'{opt_path}: network_g.type {opt_net.get("type")!r} is not a registered network '
            f'({err.args[0] if err.args else err})'
        ) from err
    except (TypeError, ValueError) as err:
        raise ValueError(f'{opt_path}: cannot build network_g: {err}') from err


def _state_dict_of(checkpoint, path):
    """(state dict, key used) of a loaded checkpoint: ``params_ema``, else ``params``, else a bare state dict."""
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f'weights file {path} holds a {type(checkpoint).__name__}, not a state dict or a basicsr '
            f'checkpoint with params / params_ema'
        )
    for key in ('params_ema', 'params'):
        if key in checkpoint:
            return checkpoint[key], key
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint, 'state_dict'
    raise ValueError(
        f'weights file {path} has neither params_ema nor params and is not a bare state dict '
        f'(top-level keys: {sorted(map(str, checkpoint))[:8]})'
    )


def load_weights(net, weights_path):
    """Load a basicsr checkpoint into ``net`` (strict).

    Takes ``params_ema`` if present, else ``params``, else the file as a bare state dict; a ``module.`` prefix
    (DataParallel / DDP) is stripped.

    Args:
        net (torch.nn.Module): the network built from the matching option file.
        weights_path (str): ``.pth`` file.

    Returns:
        str: the key used: 'params_ema', 'params' or 'state_dict' (bare).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, or weights that do not fit ``net``; the message names the file and the first
            mismatching key (missing, unexpected, or its two shapes).
    """
    weights_path = os.fspath(weights_path)
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f'weights file {weights_path} does not exist')
    try:
        checkpoint = torch.load(weights_path, map_location='cpu', weights_only=True)
    except Exception as err:  # torch raises several types (UnpicklingError, RuntimeError, EOFError) for bad files
        raise ValueError(f'cannot read weights file {weights_path}: {" ".join(str(err).split())[:300]}') from err
    state, used = _state_dict_of(checkpoint, weights_path)
    state = {k[len('module.') :] if k.startswith('module.') else k: v for k, v in state.items()}

    expected = net.state_dict()
    problems = []
    for key, value in expected.items():
        if key not in state:
            problems.append(f'missing key {key!r}')
        elif tuple(state[key].shape) != tuple(value.shape):
            problems.append(
                f'key {key!r} has shape {tuple(state[key].shape)} in the file but {tuple(value.shape)} in the network'
            )
    problems += [f'unexpected key {key!r}' for key in state if key not in expected]
    if problems:
        more = f' (and {len(problems) - 1} more mismatches)' if len(problems) > 1 else ''
        raise ValueError(
            f'weights file {weights_path} ({used}) does not fit the network {type(net).__name__} of the '
            f'option file: {problems[0]}{more}; use the option file the model was trained with'
        )
    net.load_state_dict(state, strict=True)
    return used


# ---------------------------------------------------------------------------------------------------------------------
# super-resolution
_BASELINE = object()  # sentinel: the network takes no prompt (None already means "zero prompt")


def _run(net, lq, prompt):
    return net(lq) if prompt is _BASELINE else net(lq, prompt)


def _tile_starts(size, tile):
    """Start offsets of tiles of length ``tile`` covering ``size`` (the last one may be shorter)."""
    return list(range(0, size, tile))


def super_resolve(net, lq, prompt=None, tile=None, tile_pad=32, keep_attention=False, scale=None):
    """Super-resolve a batch of images, whole or tile by tile.

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
    if tile is not None and (int(tile) != tile or tile < 1):
        raise ValueError(f'super_resolve: tile must be a positive integer or None, got {tile!r}')
    if tile_pad < 0:
        raise ValueError(f'super_resolve: tile_pad must be >= 0, got {tile_pad!r}')
    takes_prompt = hasattr(net, 'prompt_dim')
    if not takes_prompt:
        prompt = _BASELINE
    elif prompt is not None:
        prompt = prompt.to(device=lq.device, dtype=lq.dtype)
    dcms = dcm_modules(net) if keep_attention else []

    was_training = net.training
    net.eval()
    if keep_attention:
        set_keep_attention(net, True)
    try:
        with torch.no_grad():
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
    sr = _run(net, lq, prompt)
    _check_scale(sr, lq, scale)
    # A DCM built with use_attention: false has no mask.
    masks = {i: m.last_attention.float() for i, m in enumerate(dcms) if m.last_attention is not None}
    return sr.float(), masks


def _forward_tiled(net, lq, prompt, dcms, tile, pad, scale):
    """One network call per tile, the whole batch at once; each padded result is cropped and pasted."""
    b, _, h, w = lq.shape
    sr = masks = None
    for y0 in _tile_starts(h, tile):
        for x0 in _tile_starts(w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            py0, px0, py1, px1 = max(y0 - pad, 0), max(x0 - pad, 0), min(y1 + pad, h), min(x1 + pad, w)
            patch = lq[:, :, py0:py1, px0:px1]
            out = _run(net, patch, prompt)
            if sr is None:
                scale = _check_scale(out, patch, scale)
                sr = lq.new_empty(b, out.shape[1], h * scale, w * scale, dtype=torch.float32)
                masks = {
                    i: lq.new_empty(b, 1, h, w, dtype=torch.float32)
                    for i, m in enumerate(dcms)
                    if m.last_attention is not None
                }
            else:
                _check_scale(out, patch, scale)
            # Offsets of the tile inside the padded patch, in LR pixels.
            ty, tx = y0 - py0, x0 - px0
            s = scale
            sr[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = out[
                :, :, ty * s : (ty + y1 - y0) * s, tx * s : (tx + x1 - x0) * s
            ]
            for i in masks:
                mask = dcms[i].last_attention
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


def make_prompt_encoder(model_name, pretrained, device, prompt_dim):
    """The CLIP prompt encoder, checked against the network's ``prompt_dim``.

    Args:
        model_name (str): open_clip architecture ('ViT-B-32').
        pretrained (str): open_clip tag, local checkpoint file, or 'none' (random weights: tests only).
        device (torch.device): where CLIP runs.
        prompt_dim (int): the network's prompt size d.

    Raises:
        ValueError: unknown model, weights that cannot be loaded (one line saying how to pass a local file), or an
            embedding size that differs from ``prompt_dim`` (naming both).
    """
    try:
        encoder = PromptEncoder(model_name, pretrained=None if pretrained in RANDOM_TAGS else pretrained, device=device)
    except RuntimeError as err:
        raise ValueError(' '.join(str(err).split())) from err
    if encoder.embed_dim != prompt_dim:
        raise ValueError(
            f'CLIP model {model_name} makes prompt embeddings of size {encoder.embed_dim} but the '
            f'network was built with prompt_dim={prompt_dim}; pass the --clip-model the network was '
            f'trained with'
        )
    return encoder


def read_image(path):
    """(H, W, 3) uint8 RGB of an image file (cv2; greyscale becomes 3 channels, alpha is dropped).

    Raises:
        ValueError: the file cannot be decoded.
    """
    img = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f'cannot read image {path} (missing, unsupported or corrupt)')
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def image_to_tensor(rgb, device):
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 in [0, 1] on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div_(255).to(device)


def tensor_to_bgr(t):
    """(1, 3, H, W) or (3, H, W) float in [0, 1] -> (H, W, 3) uint8 BGR for cv2."""
    t = t.detach().float().cpu().squeeze(0).clamp(0, 1)
    rgb = (t.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(rgb[..., ::-1])


def write_png(path, bgr):
    """Write a PNG atomically: encode, write ``<path>.tmp``, then ``os.replace``: no half-written outputs."""
    ok, data = cv2.imencode('.png', bgr)
    if not ok:
        raise ValueError(f'cannot encode {path} as PNG')
    tmp = f'{path}.tmp'
    with open(tmp, 'wb') as f:
        f.write(data.tobytes())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------------
# CLI
def build_parser(prog='pdnsr-infer'):
    parser = argparse.ArgumentParser(
        prog=prog,
        description='Super-resolve images with a pdnsr network, guided by a text prompt, an image prompt or a '
        'caption file (one caption per input image).',
    )
    parser.add_argument('--opt', required=True, help='option YAML with the network_g section (train or test file)')
    parser.add_argument('--weights', required=True, help='checkpoint .pth (params_ema, else params)')
    parser.add_argument('--input', required=True, help='LR image file or folder of images')
    parser.add_argument('--output', required=True, help='output folder')
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--prompt', help='text prompt, used for every input image')
    group.add_argument(
        '--prompt-image',
        help='image file whose CLIP embedding is the prompt for every input; "self": each input is its own prompt '
        '(what image-prompt training uses: the LR image, flipped by default)',
    )
    group.add_argument(
        '--captions',
        help='JSON caption file: the first caption of each image key (file name '
        'without extension); images without a caption are reported and skipped',
    )
    parser.add_argument('--captions-subset', help='set name when the caption file holds several sets')
    parser.add_argument(
        '--prompt-view',
        choices=VIEWS,
        default='flip',
        help='view of --prompt-image given to CLIP (default flip, as in training)',
    )
    parser.add_argument('--clip-model', default='ViT-B-32', help='open_clip model (default ViT-B-32)')
    parser.add_argument(
        '--clip-pretrained',
        default='openai',
        help='open_clip tag, local checkpoint file, or none (random weights: tests only); default openai',
    )
    parser.add_argument('--tile', type=int, help='LR tile size (saves memory on large images); default whole image')
    parser.add_argument('--tile-pad', type=int, default=32, help='LR context pixels around each tile (default 32)')
    parser.add_argument('--fp16', action='store_true', help='half-precision autocast (CUDA only)')
    parser.add_argument('--device', help='cpu, cuda, cuda:N (default cuda if available, else cpu)')
    parser.add_argument('--suffix', default='pdnsr', help='output name <key>_<suffix>.png (default pdnsr)')
    parser.add_argument(
        '--save-attention',
        action='store_true',
        help='also write <key>_attention_dcm<i>.png: DCM masks over the SR image',
    )
    parser.add_argument(
        '--attention-dcms',
        type=int,
        nargs='+',
        default=[0, -1],
        help='DCM indices for --save-attention (default 0 -1: first and last; negative from the end)',
    )
    return parser


def _one_line(err):
    return ' '.join(str(err).split()) or type(err).__name__


def _collect_inputs(path):
    """{key: file} of an image file or a folder of images."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = scan_images(path)
        if not files:
            raise ValueError(f'--input {path}: no image files ({", ".join(sorted(set(IMAGE_SUFFIXES)))})')
        return files
    if not os.path.isfile(path):
        raise FileNotFoundError(f'--input {path} does not exist')
    return {image_key(path): path}


def _check_cli_options(args, device, net):
    if args.tile is not None and args.tile < 1:
        raise ValueError(f'--tile must be a positive integer, got {args.tile}')
    if args.tile_pad < 0:
        raise ValueError(f'--tile-pad must be >= 0, got {args.tile_pad}')
    if args.fp16 and device.type != 'cuda':
        raise ValueError(f'--fp16 needs a CUDA device; the device is {device}. Drop --fp16 to run in float32')
    if args.captions_subset and not args.captions:
        raise ValueError('--captions-subset needs --captions')
    if args.save_attention:
        dcms = dcm_modules(net)
        count = len(dcms)
        if count == 0:
            raise ValueError(
                f'--save-attention: {type(net).__name__} has no DCM (a baseline network has no attention masks)'
            )
        if not all(m.use_attention for m in dcms):
            raise ValueError(
                '--save-attention: the DCMs of this network were built with use_attention: false; '
                'there are no attention masks to save'
            )
        bad = [i for i in args.attention_dcms if not -count <= i < count]
        if bad:
            raise ValueError(
                f'--attention-dcms {bad}: the network has {count} DCMs (indices 0..{count - 1}, negative from the end)'
            )


def _prompt_source(args, net, device, keys):
    """``(prompt_of, missing)``: ``prompt_of(key, rgb)`` gives the (1, d) embedding for one input (None = no prompt),
    and ``missing`` lists the keys skipped for want of a caption."""
    prompt_given = args.prompt is not None or args.prompt_image is not None or args.captions is not None
    if not hasattr(net, 'prompt_dim'):
        if prompt_given:
            print(f'warning: {type(net).__name__} is a baseline network; the prompt is ignored', file=sys.stderr)
        return (lambda key, rgb: None), []
    if not prompt_given:
        print(f'warning: {NO_PROMPT_WARNING}', file=sys.stderr)
        return (lambda key, rgb: None), []

    # Read the cheap inputs before loading CLIP, so that their errors come first.
    captions = load_captions(args.captions, subset=args.captions_subset) if args.captions else None
    own_image = args.prompt_image == SELF_PROMPT
    prompt_rgb = read_image(args.prompt_image) if args.prompt_image and not own_image else None
    encoder = make_prompt_encoder(args.clip_model, args.clip_pretrained, device, net.prompt_dim)
    if args.prompt is not None:
        emb = encoder.encode_text([args.prompt])
        return (lambda key, rgb: emb), []
    if own_image:
        return (lambda key, rgb: encoder.encode_images([rgb], view=args.prompt_view)), []
    if prompt_rgb is not None:
        emb = encoder.encode_images([prompt_rgb], view=args.prompt_view)
        return (lambda key, rgb: emb), []
    found = [k for k in keys if captions.get(k)]
    missing = [k for k in keys if not captions.get(k)]
    emb = encoder.encode_text([captions[k][0] for k in found], keys=found)
    rows = {k: emb[i : i + 1] for i, k in enumerate(found)}
    return (lambda key, rgb: rows[key]), missing


def _select_masks(masks, indices):
    count = len(masks)
    return {i % count: masks[i % count] for i in indices}


def run(args):
    """The CLI's work once arguments are parsed; returns the exit status (0 ok, 1 some images failed).

    Raises ValueError / FileNotFoundError for user errors (bad options, weights, prompt), before any image is read.
    """
    device = resolve_device(args.device)
    net = build_network_from_options(args.opt)
    load_weights(net, args.weights)
    _check_cli_options(args, device, net)
    net = net.to(device).eval()
    inputs = _collect_inputs(args.input)
    prompt_of, missing = _prompt_source(args, net, device, list(inputs))
    os.makedirs(args.output, exist_ok=True)

    failed = 0
    for key in missing:
        print(f'{inputs[key]}: no caption for key {key!r} in {args.captions}; skipped', file=sys.stderr)
        failed += 1
    todo = [k for k in inputs if k not in missing]
    name = f'{{}}_{args.suffix}.png' if args.suffix else '{}.png'
    for key in tqdm(todo, desc='super-resolving', unit='image', file=sys.stderr, disable=None):
        try:
            rgb = read_image(inputs[key])
        except ValueError as err:
            tqdm.write(f'{inputs[key]}: {err}; skipped', file=sys.stderr)
            failed += 1
            continue
        lq = image_to_tensor(rgb, device)
        prompt = prompt_of(key, rgb)
        prompt = None if prompt is None else prompt.to(device)
        with torch.autocast('cuda', dtype=torch.float16, enabled=args.fp16):
            result = super_resolve(
                net, lq, prompt, tile=args.tile, tile_pad=args.tile_pad, keep_attention=args.save_attention
            )
        sr, masks = result if args.save_attention else (result, None)
        sr_bgr = tensor_to_bgr(sr)
        write_png(os.path.join(args.output, name.format(key)), sr_bgr)
        if masks:
            for i, mask in _select_masks(masks, args.attention_dcms).items():
                write_png(os.path.join(args.output, f'{key}_attention_dcm{i}.png'), overlay_heatmap(sr_bgr, mask[0, 0]))
    done = len(inputs) - failed
    print(
        f'{done} of {len(inputs)} images written to {args.output}' + (f'; {failed} failed' if failed else ''),
        file=sys.stderr,
    )
    return 1 if failed else 0


def main(argv=None, prog='pdnsr-infer'):
    """Entry point of ``pdnsr-infer`` / ``scripts/inference_pdnsr.py``; returns the exit status.

    0: every image written; 1: some images could not be read or had no caption (the others are written);
    2: a user error (bad option, weights, prompt, device), reported as one line on stderr.
    """
    args = build_parser(prog).parse_args(argv)
    try:
        with warnings.catch_warnings():
            # The encoder already logs the random-weights warning; do not print it a second time.
            warnings.filterwarnings('ignore', message='PromptEncoder: open_clip .* RANDOM weights')
            return run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f'{prog}: error: {_one_line(err)}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
