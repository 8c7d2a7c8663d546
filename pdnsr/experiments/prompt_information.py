"""Prompts that carry information: the captioned-degradation experiment of the demo and the benchmark.

Each LR image is made with one of K known degradations (:mod:`pdnsr.data.captioned_degradations`: a Gaussian blur
of sigma 0.4 or 2.0 before MATLAB bicubic, by default) and its caption names the degradation ("a sharp photo" / "a
blurry photo"): information the LR image hides. A baseline and its "+" twin train with one recipe through the real
stack -- :class:`PromptEncoder` -> :func:`build_prompt_store` -> ``PromptPairedImageDataset`` -> ``PDNModel`` in
``pdnsr/train.py`` subprocesses (:mod:`pdnsr.experiments.runs`) -- and the "+" network is scored with the right
caption, the swapped one and a zero prompt, through the same dataset class and :func:`pdnsr.inference.super_resolve`.

The demo (``pdnsr/demo.py``) is its small preset on scikit-image's photos; ``benchmarks/bench_prompt_information.py``
its full preset on BSD68 + SunHays80 (training) and Set5 / Set14 (testing), with DCM variants for ablations.
"""

import os
import statistics
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils import tensor2img

from pdnsr import options as opts
from pdnsr import provenance
from pdnsr.archs.dcm_arch import dcm_modules
from pdnsr.archs.plus_util import DCM_OPTIONS
from pdnsr.data.captioned_degradations import assign_degradations, captions_of, get_degradations, write_degraded_pair
from pdnsr.data.prompt_paired_image_dataset import PromptPairedImageDataset
from pdnsr.data.prompt_store import PromptStore
from pdnsr.experiments.runs import hashed_name, train_all
from pdnsr.inference import load_network, super_resolve
from pdnsr.prompts.build import build_prompt_store

# --network NAME -> (baseline type, "+" type, the network_g arguments both take from a recipe).
NETWORK_PAIRS = {
    'EDSR': ('EDSR', 'EDSRPlus', lambda r: dict(num_feat=r.num_feat, num_block=r.num_block)),
    'RRDBNet': ('RRDBNet', 'RRDBNetPlus', lambda r: dict(num_feat=r.num_feat, num_block=r.num_block,
                                                         num_grow_ch=r.num_feat // 2)),  # ESRGAN's 64 / 32
}  # fmt: skip
# basicsr's RRDBNet pixel-unshuffles by 2 at x2: odd LR sizes are reflection-padded (as RRDBNetPlus does itself).
INPUT_MULTIPLE = {'RRDBNet': 2}
DEFAULT_ROUTER = DCM_OPTIONS['router']
PLUS_MODES = ('right', 'swapped', 'zero')  # which prompt the "+" network is given at test time
SATURATED = 0.02  # a mask value below this or above 1 - this counts as saturated


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the option files and the data: the benchmark's defaults; :data:`DEMO` and
    :data:`DEMO_QUICK` are the demo's."""

    network: str = 'EDSR'
    scale: int = 2
    num_feat: int = 32
    num_block: int = 4
    gt_size: int = 48
    batch: int = 16
    iters: int = 1500
    lr: float = 2e-4
    warmup: int = -1
    ema_decay: float = 0
    betas: tuple = (0.9, 0.99)
    eta_min: float = 1e-7
    log_lines: int = 5  # training log lines per run
    degradations: str = 'blur'
    tile: int = 192  # HR training sub-images
    centre_crop: int = None  # crop every training photo to this first (keeps large photos from dominating)
    temperature_every: int = None  # epochs per step of the DCM temperature; None: 11 steps in 2/3 of the run
    dcm: dict = field(default=None, hash=False)  # network_g.dcm of the "+" network
    dataset_name: str = 'train'
    demo_names: bool = False  # runs named demo_baseline / demo_plus instead of a hash of the recipe


DEMO = Recipe(iters=600, lr=1e-3, warmup=60, ema_decay=0.9, betas=(0.9, 0.999), eta_min=1e-6, log_lines=10, tile=80,
              centre_crop=400, dataset_name='skimage_tiles', demo_names=True)  # fmt: skip
DEMO_QUICK = replace(DEMO, num_feat=16, num_block=2, gt_size=32, batch=4, iters=20, warmup=4, tile=64, centre_crop=128)


# ---------------------------------------------------------------------------------------------------------------------
# data
def tiles(img, size, centre_crop=None):
    """Non-overlapping ``size`` x ``size`` tiles of ``img`` in row order (the whole image if it is smaller), after
    an optional centre crop to ``centre_crop``."""
    if centre_crop:
        top, left = max(0, (img.shape[0] - centre_crop) // 2), max(0, (img.shape[1] - centre_crop) // 2)
        img = img[top : top + centre_crop, left : left + centre_crop]
    if img.shape[0] < size or img.shape[1] < size:
        return [img]
    return [
        np.ascontiguousarray(img[top : top + size, left : left + size])
        for top in range(0, img.shape[0] - size + 1, size)
        for left in range(0, img.shape[1] - size + 1, size)
    ]


def _done(folder, write=False):
    """Whether ``folder`` was written completely (``write``: mark it so); its files are written before the mark."""
    if write:
        open(os.path.join(folder, 'done.json'), 'w').close()
    return os.path.exists(os.path.join(folder, 'done.json'))


def _store(encoder, path, captions):
    if not os.path.exists(path):
        build_prompt_store('text', path, encoder, captions=captions, progress=False)
    return path


def prepare(recipe, train_images, test_sets, data_dir, encoder, clip_tag, data_seed=0):
    """Write the training pairs (one degradation per tile) and every test image under every degradation, with
    their prompt stores; a folder finished before (``done.json``) is reused.

    Args:
        train_images (dict[str, np.ndarray]): name -> HR image (H, W, 3) uint8 BGR.
        test_sets (dict[str, dict[str, np.ndarray]]): set name -> {key: HR image}.
        data_dir (str): where the data goes.
        encoder (PromptEncoder): encodes the captions.
        clip_tag (str): names the stores after the CLIP weights.

    Returns:
        dict: ``train`` (hr, lr, prompts, assignment) and ``tests`` {(set, degradation name): (hr, lr, right,
        swapped)} folder / store paths.
    """
    degradations = get_degradations(recipe.degradations)
    crops = {
        f'{name}_s{i:03d}': t
        for name, img in train_images.items()
        for i, t in enumerate(tiles(img, recipe.tile, recipe.centre_crop), 1)
    }
    assignment = assign_degradations(crops, degradations, seed=data_seed)
    train_dir = os.path.join(data_dir, 'train')
    hr, lr = os.path.join(train_dir, 'HR'), os.path.join(train_dir, f'LRx{recipe.scale}')
    if not _done(train_dir):
        for folder in (hr, lr):
            os.makedirs(folder, exist_ok=True)
        for key, tile in crops.items():
            write_degraded_pair(tile, assignment[key], recipe.scale, key, hr, lr)
        _done(train_dir, write=True)
    train = dict(hr=hr, lr=lr, assignment=assignment)
    train['prompts'] = _store(encoder, os.path.join(train_dir, f'prompts_{clip_tag}.lmdb'), captions_of(assignment))
    tests = {}
    for set_name, images in test_sets.items():
        for deg in degradations:
            folder = os.path.join(data_dir, 'test', set_name, deg.name)
            thr, tlr = os.path.join(folder, 'HR'), os.path.join(folder, 'LR')
            if not _done(folder):
                for path in (thr, tlr):
                    os.makedirs(path, exist_ok=True)
                for key, img in images.items():
                    write_degraded_pair(img, deg, recipe.scale, key, thr, tlr)
                _done(folder, write=True)
            given = {key: deg for key in images}
            tests[set_name, deg.name] = (
                thr,
                tlr,
                _store(encoder, os.path.join(folder, f'right_{clip_tag}.lmdb'), captions_of(given)),
                _store(encoder, os.path.join(folder, f'swapped_{clip_tag}.lmdb'), captions_of(given, degradations)),
            )
    return dict(train=train, tests=tests)


# ---------------------------------------------------------------------------------------------------------------------
# options and training
def temperature_every(recipe, n_train, enlarge=1):
    """Epochs per temperature step: the paper's 11 steps (34 -> 1 by 3) squeezed into the first 2/3 of the run."""
    if recipe.temperature_every is not None:
        return recipe.temperature_every
    epochs = recipe.iters / max(1, (n_train * enlarge) // recipe.batch)
    return max(1, int(epochs * 2 / 3 / 11))


def run_options(recipe, kind, seed, train, prompt_dim):
    """The option dict of one training run: ``kind`` 'baseline' or 'plus'; a baseline and its "+" twin share it
    but for the network type, the dataset type and the DCM temperature."""
    net_type = NETWORK_PAIRS[recipe.network][0 if kind == 'baseline' else 1]
    prompted = kind == 'plus'
    network_g = opts.network(
        net_type, recipe.scale, prompt_dim, recipe.dcm if prompted else None, **NETWORK_PAIRS[recipe.network][2](recipe)
    )
    n_train = len(train['assignment'])
    # A few dozen tiles are fewer than some batches; basicsr drops the last incomplete batch: repeat the list.
    enlarge = max(1, -(-2 * recipe.batch // n_train))
    train_set = opts.train_dataset(
        recipe.dataset_name,
        train['hr'],
        train['lr'],
        recipe.gt_size,
        recipe.batch,
        train['prompts'],
        prompted,
        enlarge=enlarge,
    )
    opt = opts.train_options(
        f'demo_{kind}',
        network_g,
        train_set,
        recipe.scale,
        recipe.iters,
        recipe.lr,
        seed=seed,
        warmup_iter=recipe.warmup,
        ema_decay=recipe.ema_decay,
        betas=recipe.betas,
        eta_min=recipe.eta_min,
        temperature=dict(init=34, step=3, every_epochs=temperature_every(recipe, n_train, enlarge), min=1),
        print_freq=max(1, recipe.iters // recipe.log_lines),
        checkpoint_freq=10**9 if recipe.demo_names else None,
    )
    if not recipe.demo_names:  # named after the whole recipe: a changed recipe never reuses an old run
        opt['name'] = hashed_name(f'info_{net_type}_seed{seed}', opt)
    return opt


def train(opts_by_run, root, jobs, reuse, on_line=None, on_done=None):
    """Train every run ({run: option dict}) with :func:`pdnsr.experiments.runs.train_all`; returns {run: weights}."""
    names = {opt['name']: run for run, opt in opts_by_run.items()}
    weights = train_all(list(opts_by_run.values()), root, jobs, reuse, on_line, on_done)
    return {names[name]: path for name, path in weights.items()}


# ---------------------------------------------------------------------------------------------------------------------
# evaluation
def _dataset(hr, lr, store, scale):
    """The test folder as ``PromptPairedImageDataset`` reads it (validation form: each image's first prompt)."""
    return PromptPairedImageDataset(dict(opts.dataset('test', hr, lr, store, prompted=True), phase='val', scale=scale))


def evaluate(opt_path, weights, tests, scale, prompted, keep_images=False):
    """Scores and diagnostics of one trained network on every test condition.

    Returns:
        dict: ``scores[set][degradation][mode] = [(psnr, ssim), ...]`` per image (modes :data:`PLUS_MODES` for a
        "+" network, ``baseline`` otherwise); for a "+" network ``diag[degradation]``: the router weights ``pi``
        under the right and the swapped caption (per DCM), and per mode the mean mask, its saturated share, and the
        mean |mask(right) - mask(swapped)| (per DCM); ``temperature``, ``zeta``. With ``keep_images``, ``images[set]
        [degradation][mode] = (uint8 BGR SR image, {dcm: mask})`` of the last image, and ``hr`` likewise.
    """
    net, _, record = load_network(opt_path, weights, 'cpu')
    if prompted:  # the test prompts must come from the embedding space the model was trained in
        trained = (record or {}).get('prompt_encoder')
        for *_, store, _swapped in tests.values():
            provenance.check_same_space(trained, provenance.encoder_record(PromptStore(store).meta), weights, store)
    multiple = INPUT_MULTIPLE.get(type(net).__name__.replace('Plus', ''), 1)
    dcms = dcm_modules(net)
    out = {'scores': {}, 'diag': {}, 'images': {}, 'hr': {}}
    for (set_name, deg_name), (hr, lr, right_store, swapped_store) in tests.items():
        right, wrong = _dataset(hr, lr, right_store, scale), _dataset(hr, lr, swapped_store, scale)
        cell = out['scores'].setdefault(set_name, {}).setdefault(deg_name, {})
        diag = out['diag'].setdefault(deg_name, {'mask': {}, 'saturated': {}, 'right_vs_swapped': [], 'n': 0})
        for i in range(len(right)):
            item = right[i]
            lq = item['lq'][None]
            h, w = lq.shape[-2:]
            lq = torch.nn.functional.pad(lq, (0, -w % multiple, 0, -h % multiple), mode='reflect')
            gt = tensor2img(item['gt'])
            modes = {'baseline': None}
            if prompted:
                modes = {'right': item['prompt'][None], 'swapped': wrong[i]['prompt'][None], 'zero': None}
                with torch.no_grad():
                    diag['pi'] = {m: [d.kernel_weights(modes[m])[0].tolist() for d in dcms] for m in PLUS_MODES[:2]}
            masks = {}
            for mode, prompt in modes.items():
                sr, masks[mode] = super_resolve(net, lq, prompt, keep_attention=True, scale=scale)
                sr = tensor2img(sr[..., : h * scale, : w * scale])
                score = (
                    calculate_psnr(sr, gt, scale, test_y_channel=True),
                    calculate_ssim(sr, gt, scale, test_y_channel=True),
                )
                cell.setdefault(mode, []).append(score)
                if keep_images:
                    out['images'].setdefault(set_name, {}).setdefault(deg_name, {})[mode] = (sr, masks[mode])
                    out['hr'].setdefault(set_name, {})[deg_name] = gt
            if prompted and masks['right']:  # DCMs built without attention have no mask
                diag['n'] += 1
                for mode, per_dcm in masks.items():
                    m = [per_dcm[j] for j in sorted(per_dcm)]
                    diag['mask'].setdefault(mode, []).append([float(x.mean()) for x in m])
                    sat = [float(((x < SATURATED) | (x > 1 - SATURATED)).float().mean()) for x in m]
                    diag['saturated'].setdefault(mode, []).append(sat)
                diag['right_vs_swapped'].append(
                    [float((masks['right'][j] - masks['swapped'][j]).abs().mean()) for j in sorted(masks['right'])]
                )
    for diag in out['diag'].values():  # per-image lists -> means per DCM
        for key in ('mask', 'saturated'):
            diag[key] = {mode: np.mean(v, axis=0).tolist() for mode, v in diag[key].items()}
        diag['right_vs_swapped'] = np.mean(diag['right_vs_swapped'], axis=0).tolist() if diag['n'] else []
    out['temperature'] = sorted({float(d.temperature) for d in dcms})
    out['zeta'] = [float(d.zeta.detach()) for d in dcms if hasattr(d, 'zeta')]
    return out


def router_spread(diag):
    """Max over DCMs of the mean |pi(right) - pi(swapped)| (over kernels and degradations): how much the router's
    kernel mixture follows the caption (0 = not at all)."""
    per_deg = [np.abs(np.subtract(d['pi']['right'], d['pi']['swapped'])).mean(axis=1) for d in diag.values()]
    return float(np.max(np.mean(per_deg, axis=0)))


# ---------------------------------------------------------------------------------------------------------------------
# tables
def mean_std(values, digits):
    if len(values) == 1:
        return f'{values[0]:.{digits}f}'
    return f'{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}'


def seed_means(results, key, set_name, degs, metric=0):
    """Per seed (in order), the mean over the images of the degradations ``degs`` of ``metric`` (0 PSNR, 1 SSIM)
    of network ``key[0]`` in mode ``key[1]``; ``results[(network, seed)]`` as :func:`evaluate` returns."""
    net, mode = key
    seeds = sorted(seed for (n, seed) in results if n == net)
    return [
        statistics.mean(v[metric] for d in degs for v in results[net, seed]['scores'][set_name][d][mode])
        for seed in seeds
    ]
