"""ONNX graphs of pdnsr networks: export (checked against PyTorch before it counts), metadata, and running them.

Three kinds of graph, all with ``image (N, C, H, W)`` float32 in [0, 1] in and ``output (N, C, sH, sW)`` float32
out (not clamped, like the network; :class:`OnnxNetwork` clamps as ``super_resolve`` does):

- ``two-input``: a prompt-guided network with the prompt as a second input, ``prompt (N, prompt_dim)`` float32;
- ``baked``: a prompt-guided network with one prompt built in (``image`` in, ``output`` out: the interface every
  ONNX SR tool expects); the DCMs are plain convolutions (:class:`pdnsr.tools.export.standins.BakedDCM`);
- ``image-only``: a baseline network (EDSR, RCAN, RDN...).

N, H and W are dynamic, except for SwinIR, whose basicsr code turns shapes into Python integers (``window_reverse``,
the attention mask): its graph is exported for one input size and batch 1 (``fixed_size``); :class:`OnnxNetwork`
pads smaller inputs to it. The graph's ``metadata_props`` hold ``pdnsr``: JSON with the kind of graph, scale, prompt
size, precision, the checkpoint's provenance record (:mod:`pdnsr.provenance`), the baked prompt's source and the
verification figures. The exporter is PyTorch's TorchScript-based one (``dynamo=False``): measured, the
``torch.export`` one refuses RRDBNet's and SwinIR's shape-dependent padding with dynamic sizes (docs/deploy.md).
"""

import contextlib
import copy
import json
import math
import os
import warnings

import numpy as np
import torch
from basicsr.archs.swinir_arch import SwinIR

import pdnsr
from pdnsr.archs.dcm_arch import takes_prompt
from pdnsr.errors import UserError
from pdnsr.inference import resolve_device
from pdnsr.tools.export import require
from pdnsr.tools.export.standins import ExportModule
from pdnsr.utils.files import written_atomically

META_KEY = 'pdnsr'
FORMAT = 1
GRAPHS = ('two-input', 'baked', 'image-only')
OPSET = 17  # the default
INPUT, PROMPT, OUTPUT = 'image', 'prompt', 'output'
# Traced at one shape, verified at another batch size and other odd sizes: a shape the tracer baked into the graph
# (a Python int taken from a tensor's size) fails the verification instead of shipping.
TRACE_SHAPE = (1, 29, 23)
VERIFY_SHAPE = (2, 19, 27)
# The targets of issue 17, which the exporter enforces and the tests hold every graph to (one definition): a correct
# float32 graph differs from PyTorch by float rounding only (measured <= 1e-6 on the tests' networks, 6e-6 on a full
# RCAN+; docs/deploy.md); a float16 graph by its rounding, measured 72-83 dB from float32 PyTorch on random-weight
# networks up to a full RCAN+, so 50 dB (an RMS error of 0.8 / 255) leaves room for trained ones.
FP32_MAX_ERROR = 1e-4
FP16_MIN_PSNR = 50.0
# LayerNormalization (SwinIR) and the other operators the graphs use need opset 17.
MIN_OPSET = 17


class ExportMismatch(UserError):
    """The exported graph does not compute what the PyTorch network computes (the file is deleted)."""


def psnr(a, b):
    """PSNR in dB of two arrays of images in [0, 1], clamped to it first (inf when equal)."""
    a, b = np.clip(np.asarray(a, np.float64), 0, 1), np.clip(np.asarray(b, np.float64), 0, 1)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


@contextlib.contextmanager
def _quiet_tracing():
    """Silence the tracer's warnings about Python values taken from tensors (basicsr's and ours: the verification at
    another shape is what tells whether they matter) and the exporter's deprecation notice."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter('ignore', DeprecationWarning)
        warnings.simplefilter('ignore', FutureWarning)
        warnings.filterwarnings('ignore', 'Constant folding', UserWarning)  # Slice with steps: left to onnxruntime
        yield


def check_opset(opset):
    """``opset`` as an int, or a :class:`UserError` when it is below :data:`MIN_OPSET` (checked before any loading)."""
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise UserError(
            f'--opset {opset}: pdnsr graphs need ONNX opset >= {MIN_OPSET} (LayerNormalization and the other '
            f'operators they use); give --opset {MIN_OPSET} or higher, or leave the default ({OPSET})'
        )
    return opset


def check_graph(model, path):
    """Run the ONNX checker (full check: strict shape inference too) on ``model``, the graph about to be written to
    ``path``.

    Raises:
        UserError: the checker refuses the graph; one line naming ``path`` and the checker's first words.
    """
    onnx = require('onnx', 'ONNX export')
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        reason = ' '.join(str(err).split())[:300]
        raise UserError(f'{path}: the exported graph fails the ONNX checker, so it was not written: {reason}') from err


def graph_kind(net, prompt):
    """'two-input', 'baked' or 'image-only' for ``net`` exported with ``prompt`` (None or ``(1, d)``)."""
    if not takes_prompt(net):
        if prompt is not None:
            raise UserError(f'{type(net).__name__} is a baseline network (no DCM): it takes no prompt to bake in')
        return 'image-only'
    return 'two-input' if prompt is None else 'baked'


def _fixed_size(net, fixed_size):
    """The static input size ``(H, W)`` of the graph, or None for a dynamic one.

    SwinIR must have one (module docstring); it is rounded up to a multiple of the window size, so that every input
    whose window-padded size is that size runs exactly as in PyTorch (the network pads by reflection too).
    """
    swin = isinstance(net, SwinIR)
    if swin and fixed_size is None:
        raise UserError(
            f"{type(net).__name__} cannot be exported with a dynamic input size: basicsr's SwinIR turns tensor sizes "
            f'into Python integers (window_reverse, the shifted-window attention mask), which the graph would keep '
            f'as constants. Export one input size with --fixed-size HxW (e.g. --fixed-size 64x64); pdnsr-infer '
            f'--onnx runs such a graph tile by tile (see docs/deploy.md)'
        )
    if fixed_size is None:
        return None
    if len(fixed_size) != 2 or any(int(v) != v or v < 1 for v in fixed_size):
        raise ValueError(f'fixed input size must be two positive integers (H, W), got {fixed_size!r}')
    if not swin:
        return int(fixed_size[0]), int(fixed_size[1])
    window = net.layers[0].residual_group.blocks[0].window_size
    return tuple(-(-int(v) // window) * window for v in fixed_size)


def _inputs(shape, channels, prompt_dim, seed):
    """A random image ``(N, C, H, W)`` in [0, 1] and random unit prompts ``(N, d)`` (None without ``prompt_dim``)."""
    n, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(n, channels, h, w, generator=gen)
    if prompt_dim is None:
        return image, None
    prompt = torch.randn(n, prompt_dim, generator=gen)
    return image, prompt / prompt.norm(dim=1, keepdim=True)


def _reference(net, kind, image, prompt, baked_prompt):
    """What PyTorch computes for the graph's inputs: ``net`` itself, with the baked prompt for a baked graph."""
    with torch.no_grad():
        if kind == 'image-only':
            return net(image)
        if kind == 'baked':
            return net(image, baked_prompt.to(image.dtype).reshape(1, -1).expand(image.shape[0], -1))
        return net(image, prompt)


def session(path, threads=None, providers=None):
    """An onnxruntime ``InferenceSession`` of ``path`` (CPU unless ``providers`` says otherwise).

    Raises:
        UserError: onnxruntime is not installed, or the file is not an ONNX model it can load.
    """
    ort = require('onnxruntime', 'running an ONNX graph')
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(os.fspath(path), options, providers=providers or ['CPUExecutionProvider'])
    except Exception as err:  # onnxruntime raises its own types (InvalidProtobuf, Fail, NoSuchFile...)
        raise UserError(f'cannot load ONNX file {path}: {" ".join(str(err).split())[:300]}') from err


def _run(sess, image, prompt=None):
    feeds = {INPUT: image.detach().float().cpu().numpy()}
    if prompt is not None:
        feeds[PROMPT] = prompt.detach().float().cpu().numpy()
    return torch.from_numpy(sess.run([OUTPUT], feeds)[0])


def verify(path, net, kind, *, shape, channels=3, baked_prompt=None, half=False, seed=0):
    """Run the graph at ``path`` with onnxruntime (CPU) and ``net`` with PyTorch (float32) on the same random inputs.

    Args:
        shape (tuple): ``(N, H, W)`` of the random image.
        baked_prompt (torch.Tensor | None): the ``(1, d)`` prompt of a baked graph.
        half (bool): a float16 graph: judged by PSNR (>= :data:`FP16_MIN_PSNR`), not by the largest error.

    Returns:
        dict: ``shape`` and ``output_shape`` (N, C, H, W), ``max_abs_error``, ``psnr_db`` (vs PyTorch float32; the PSNR
        of both outputs clamped to [0, 1]).

    Raises:
        ExportMismatch: the graph cannot run at that shape, or its output differs beyond the tolerance.
    """
    prompt_dim = net.prompt_dim if kind == 'two-input' else None
    image, prompt = _inputs(shape, channels, prompt_dim, seed)
    where = f'on a random {"x".join(map(str, image.shape))} image'
    try:
        got = _run(session(path, threads=torch.get_num_threads()), image, prompt)
    except Exception as err:  # onnxruntime's errors for a shape the graph does not take
        raise ExportMismatch(f'the exported graph fails {where}: {" ".join(str(err).split())[:300]}') from err
    want = _reference(net, kind, image, prompt, baked_prompt).float()
    if got.shape != want.shape:
        raise ExportMismatch(f'the exported graph gives {tuple(got.shape)} {where}; PyTorch {tuple(want.shape)}')
    error = float((got - want).abs().max())
    quality = psnr(got.numpy(), want.numpy())
    report = {'shape': list(image.shape), 'output_shape': list(got.shape), 'max_abs_error': error, 'psnr_db': quality}
    bad = not math.isfinite(error) or (quality < FP16_MIN_PSNR if half else error > FP32_MAX_ERROR)
    if bad:
        target = f'PSNR >= {FP16_MIN_PSNR} dB' if half else f'max abs error <= {FP32_MAX_ERROR:g}'
        raise ExportMismatch(
            f'the exported graph differs from PyTorch {where}: max abs error {error:.3g}, PSNR {quality:.1f} dB '
            f'(target {target})'
        )
    return report


def export_onnx(
    net,
    path,
    *,
    prompt=None,
    half=False,
    fixed_size=None,
    channels=3,
    metadata=None,
    form='unfold',
    opset=OPSET,
):
    """Write ``net`` as an ONNX graph to ``path``, verified against PyTorch first; a failure leaves no file.

    Args:
        net (torch.nn.Module): a pdnsr network (or a baseline), float32, on the CPU; not modified.
        path (str): the ``.onnx`` file; written under a temporary name and renamed once verified.
        prompt (torch.Tensor | None): ``(1, prompt_dim)``: a baked graph with this prompt; None: a two-input graph
            (or an image-only one for a baseline).
        half (bool): a float16 graph (inputs and outputs stay float32; the DCM masks are computed in float32).
        fixed_size (tuple | None): ``(H, W)``: a static graph of batch 1 and this input size (needed by SwinIR;
            rounded up to a multiple of its window size).
        channels (int): image channels of the input.
        metadata (dict | None): merged into the graph's ``pdnsr`` metadata (provenance, prompt source...).
        form (str): the two-input DCM formulation (:data:`pdnsr.tools.export.standins.FORMS`).
        opset (int): ONNX opset, >= :data:`MIN_OPSET`.

    Returns:
        dict: the ``pdnsr`` metadata written (``verified`` holds the figures of :func:`verify`).

    Raises:
        UserError: a missing package, a network that cannot be exported this way, or ``ExportMismatch``.
    """
    onnx = require('onnx', 'ONNX export')
    require('onnxruntime', 'ONNX export (the graph is verified with onnxruntime)')
    kind = graph_kind(net, prompt)
    fixed_size = _fixed_size(net, fixed_size)
    check_opset(opset)
    net = copy.deepcopy(net).eval()  # the caller's network keeps its mode
    dtype = torch.float16 if half else torch.float32
    module = ExportModule(net, prompt, dtype, form).eval()
    n, h, w = (1, *fixed_size) if fixed_size else TRACE_SHAPE
    image, example_prompt = _inputs((n, h, w), channels, net.prompt_dim if kind == 'two-input' else None, seed=1)
    args, names = (image, example_prompt), [INPUT, PROMPT]
    if kind != 'two-input':
        args, names = (image,), [INPUT]
    dynamic = None
    if fixed_size is None:
        dynamic = {INPUT: {0: 'N', 2: 'H', 3: 'W'}, OUTPUT: {0: 'N', 2: 'sH', 3: 'sW'}}
        if kind == 'two-input':
            dynamic[PROMPT] = {0: 'N'}

    with written_atomically(path) as tmp:
        try:
            with _quiet_tracing(), torch.no_grad():
                torch.onnx.export(
                    module,
                    args,
                    tmp,
                    input_names=names,
                    output_names=[OUTPUT],
                    opset_version=opset,
                    dynamic_axes=dynamic,
                    dynamo=False,
                )
        except (RuntimeError, TypeError, ValueError) as err:  # the tracer's or the network's own, in that precision
            precision = ' in float16' if half else ''
            raise UserError(
                f'{type(net).__name__} cannot be traced{precision} for ONNX export: {" ".join(str(err).split())[:300]}'
            ) from err
        verified = verify(
            tmp,
            net,
            kind,
            shape=(n, h, w) if fixed_size else VERIFY_SHAPE,
            channels=channels,
            baked_prompt=prompt,
            half=half,
        )
        meta = {
            'format': FORMAT,
            'graph': kind,
            'network': type(net).__name__,
            'scale': verified['output_shape'][-2] // verified['shape'][-2],
            'channels': channels,
            'prompt_dim': getattr(net, 'prompt_dim', None),
            'dtype': 'float16' if half else 'float32',
            'input_size': list(fixed_size) if fixed_size else None,
            'opset': opset,
            'dcm_form': form if kind == 'two-input' else None,
            'pdnsr_version': pdnsr.__version__,
            'verified': verified,
            **(metadata or {}),
        }
        model = onnx.load(tmp)
        onnx.helper.set_model_props(model, {META_KEY: json.dumps(meta)})
        check_graph(model, path)
        onnx.save(model, tmp)
    return meta


def read_metadata(sess, path):
    """The ``pdnsr`` metadata of a loaded graph (:func:`session`).

    Raises:
        UserError: the graph has none (not exported by pdnsr-export) or it cannot be read.
    """
    props = sess.get_modelmeta().custom_metadata_map
    if META_KEY not in props:
        raise UserError(
            f'{path} is not a pdnsr graph (its metadata has no {META_KEY!r} entry): pdnsr-infer --onnx runs graphs '
            f'written by pdnsr-export; run other ONNX models with onnxruntime directly'
        )
    try:
        meta = json.loads(props[META_KEY])
    except ValueError as err:
        raise UserError(f'{path}: the {META_KEY!r} metadata is not JSON ({err})') from err
    if not isinstance(meta, dict) or meta.get('graph') not in GRAPHS:
        raise UserError(f'{path}: the {META_KEY!r} metadata names no graph kind of {list(GRAPHS)}')
    return meta


class OnnxNetwork(torch.nn.Module):
    """A pdnsr ONNX graph behind the interface of a pdnsr network, for :func:`pdnsr.inference.super_resolve`.

    ``forward(lq (B, C, h, w) [, prompt (B, d)]) -> (B, C, s h, s w)`` float32 on the CPU. A two-input graph has
    ``prompt_dim`` (None prompt = the zero prompt, as for the network); a baked or image-only graph has
    ``prompt_dim = None`` and is called without a prompt. A fixed-size graph (SwinIR) gets each image reflection-padded
    at the bottom / right to its size, one sample at a time, and the output cropped.

    Args:
        path (str): the ``.onnx`` file.
        threads (int | None): onnxruntime's intra-op threads (None: its default).
        providers (list | None): onnxruntime execution providers (default CPU).

    Raises:
        UserError: not loadable, or not a pdnsr graph.
    """

    def __init__(self, path, threads=None, providers=None):
        super().__init__()
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f'ONNX file {self.path} does not exist')
        self.session = session(self.path, threads, providers)
        self.meta = read_metadata(self.session, self.path)
        self.graph = self.meta['graph']
        self.scale = int(self.meta['scale'])
        self.prompt_dim = self.meta['prompt_dim'] if self.graph == 'two-input' else None
        self.fixed_size = tuple(self.meta['input_size']) if self.meta.get('input_size') else None
        # The checkpoint's provenance record (prompt encoder...), for the same checks as the PyTorch path.
        self.provenance = self.meta.get('checkpoint')

    def extra_repr(self):
        return f'{self.path}, graph={self.graph}, scale={self.scale}, prompt_dim={self.prompt_dim}'

    def forward(self, lq, prompt=None):
        if self.prompt_dim is not None and prompt is None:
            prompt = lq.new_zeros(lq.shape[0], self.prompt_dim)
        if self.prompt_dim is None:
            prompt = None
        if self.fixed_size is None:
            return _run(self.session, lq, prompt).to(lq.device)
        outs = [self._fixed(lq[i : i + 1], None if prompt is None else prompt[i : i + 1]) for i in range(len(lq))]
        return torch.cat(outs).to(lq.device)

    def _fixed(self, lq, prompt):
        (fh, fw), (h, w) = self.fixed_size, lq.shape[-2:]
        if h > fh or w > fw:
            raise ValueError(
                f'{self.path} is a fixed-size graph for {fh}x{fw} inputs; this input is {h}x{w}: run it in tiles '
                f'(--tile T with T + 2 x --tile-pad <= {min(fh, fw)}) or export a larger --fixed-size'
            )
        ph, pw = fh - h, fw - w
        if ph or pw:  # reflection needs a pad smaller than the side
            lq = torch.nn.functional.pad(lq, (0, pw, 0, ph), mode='reflect' if ph < h and pw < w else 'replicate')
        return _run(self.session, lq, prompt)[..., : h * self.scale, : w * self.scale]


def _describe_prompt(source):
    if not source:
        return 'a prompt'
    if source.get('kind') == 'text':
        return f'the text {source.get("text")!r}'
    return f'the {source.get("kind")} {source.get("file")}'


def network_for_cli(args):
    """``(OnnxNetwork, torch.device('cpu'), record)`` for ``pdnsr-infer --onnx``, after the checks of that path;
    ``record`` is the provenance record of the checkpoint the graph was exported from (None if it had none), as
    :func:`pdnsr.inference.load_network` gives it for a checkpoint.

    Tensors stay on the CPU (onnxruntime reads numpy arrays); ``--device cuda`` selects onnxruntime's CUDA provider.

    Raises:
        UserError: ``--opt`` / ``--weights`` / ``--fp16`` / ``--save-attention`` with a graph, a prompt flag with a
            baked graph, a file that is not a pdnsr graph, no CUDA provider for ``--device cuda``.
    """
    ort = require('onnxruntime', 'pdnsr-infer --onnx')
    if args.opt or args.weights:
        raise UserError('--onnx replaces --opt and --weights (the graph holds the network and its weights): drop them')
    if args.fp16:
        raise UserError('--fp16 is for the PyTorch path; export a float16 graph with pdnsr-export --half instead')
    if args.save_attention:
        raise UserError('--save-attention needs the PyTorch network (--opt, --weights): a graph outputs the image only')
    providers = None
    if args.device and resolve_device(args.device).type == 'cuda':  # a bad or unavailable name: its one line
        if 'CUDAExecutionProvider' not in ort.get_available_providers():
            raise UserError('--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu)')
        providers = ['CUDAExecutionProvider', 'CPUExecutionProvider']
    net = OnnxNetwork(args.onnx, providers=providers)
    flags = {'--prompt': args.prompt, '--prompt-image': args.prompt_image, '--captions': args.captions}
    given = [flag for flag, value in flags.items() if value is not None]
    if net.graph == 'baked' and given:
        raise UserError(
            f'{args.onnx} is a baked graph: {_describe_prompt(net.meta.get("prompt"))} was built in at export, so it '
            f'takes no {given[0]}; drop {given[0]}, or export a two-input graph (pdnsr-export without a prompt)'
        )
    return net, torch.device('cpu'), net.provenance
