"""Prompts that carry information: the captioned-degradation experiment of the demo and the benchmark.

Each LR image is made with one of K known degradations (:mod:`.captioned_degradations`; by default a
Gaussian blur of sigma 0.4 or 2.0 before MATLAB bicubic) and its caption names it ("a sharp photo" / "a blurry
photo"): information the LR image hides. A baseline and its "+" twin train with one recipe in ``pdnsr/train.py``
subprocesses (:mod:`.runs`); the "+" network is scored with the right caption, the swapped one and
a zero prompt, read by ``PromptPairedImageDataset`` and run by :class:`pdnsr.inference.Upsampler`. The demo
(``pdnsr/tools/demo.py``) is its small preset, ``benchmarks/bench_prompt_information.py`` its full one.
"""

import os
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils import tensor2img

from pdnsr import options as opts
from pdnsr import provenance
from pdnsr.archs.dcm_arch import dcm_modules
from pdnsr.archs.plus_util import DCM_OPTIONS
from pdnsr.data.prompt_paired_image_dataset import PromptPairedImageDataset
from pdnsr.data.prompt_store import PromptStore
from pdnsr.inference import Upsampler
from pdnsr.prompts.build import build_prompt_store
from pdnsr.prompts.encoder import RANDOM_TAGS, PromptEncoder
from pdnsr.tools import sample_data
from pdnsr.tools.experiments import captioned_degradations as cdeg
from pdnsr.tools.experiments.runs import hashed_name
from pdnsr.utils.files import fill_once

# --network NAME -> (baseline type, "+" type); both take the recipe's num_feat and num_block.
NETWORK_PAIRS = {'EDSR': ('EDSR', 'EDSRPlus'), 'RRDBNet': ('RRDBNet', 'RRDBNetPlus')}
DEFAULT_ROUTER = DCM_OPTIONS['router']
PLUS_MODES = ('right', 'swapped', 'zero')  # which prompt the "+" network is given at test time
SATURATED = 0.02  # a mask value below this or above 1 - this counts as saturated
# Per-DCM statistics of an attention mask (h, w): its mean, and its share of saturated values.
MASK_STATS = {'mask': np.mean, 'saturated': lambda m: ((m < SATURATED) | (m > 1 - SATURATED)).mean()}


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
    img = sample_data.centre_crop(img, centre_crop) if centre_crop else img
    if min(img.shape[:2]) < size:
        return [img]
    rows, cols = (range(0, side - size + 1, size) for side in img.shape[:2])
    return [np.ascontiguousarray(img[y : y + size, x : x + size]) for y in rows for x in cols]


def _pairs(folder, lr_name, items, scale):
    """Write ``items`` ({key: (HR image, degradation)}) as ``folder/HR`` / ``folder/<lr_name>`` pairs unless a
    finished folder is there (:func:`fill_once`); returns the two folders."""
    dirs = os.path.join(folder, 'HR'), os.path.join(folder, lr_name)
    fill_once(folder, lambda: cdeg.write_degraded_pairs(items, scale, *dirs))
    return dirs


def prepare(recipe, train_images, test_sets, data_dir, clip_model, clip_pretrained, seed=0):
    """Write the training pairs (one degradation per tile) and every test image under every degradation, with
    their prompt stores; a folder finished before (``done.json``) is reused.

    ``train_images`` is {name: HR image (H, W, 3) uint8 BGR}, ``test_sets`` {set: {key: HR image}}. CLIP
    ``clip_model`` / ``clip_pretrained`` encodes the captions (random weights seeded with ``seed`` for a tag of
    ``RANDOM_TAGS``; ``seed`` also draws each tile's degradation). The stores are named after the encoder, so that
    another encoder never reuses them, nor (through the store paths in the option dicts) the runs trained on them.

    Returns:
        dict: ``train`` (hr, lr, prompts, assignment) and ``tests`` {(set, degradation name): (hr, lr, right,
        swapped)} folder / store paths; ``prompt_dim``; ``degradations`` (the recipe's K); ``caption_embeddings``
        (K, prompt_dim), one per degradation.
    """
    random_clip = clip_pretrained in RANDOM_TAGS
    encoder = PromptEncoder(clip_model, None if random_clip else clip_pretrained, 'cpu', seed=seed)
    clip_tag = f'{clip_model}_{provenance.weights_tag(clip_pretrained)}'.replace('/', '_')  # hf-hub:org/name

    def store(folder, kind, given, wrong_from=None):
        path = os.path.join(folder, f'{kind}_{clip_tag}.lmdb')
        if not os.path.exists(path):
            build_prompt_store('text', path, encoder, captions=cdeg.captions_of(given, wrong_from), progress=False)
        return path

    degs = cdeg.get_degradations(recipe.degradations)
    crops = {
        f'{name}_s{i:03d}': t
        for name, img in train_images.items()
        for i, t in enumerate(tiles(img, recipe.tile, recipe.centre_crop), 1)
    }
    assignment = cdeg.assign_degradations(crops, degs, seed=seed)
    train_dir = os.path.join(data_dir, 'train')
    hr, lr = _pairs(train_dir, f'LRx{recipe.scale}', {k: (t, assignment[k]) for k, t in crops.items()}, recipe.scale)
    train = dict(hr=hr, lr=lr, assignment=assignment, prompts=store(train_dir, 'prompts', assignment))
    tests = {}
    for set_name, images in test_sets.items():
        for deg in degs:
            folder, given = os.path.join(data_dir, 'test', set_name, deg.name), dict.fromkeys(images, deg)
            pairs = _pairs(folder, 'LR', {key: (img, deg) for key, img in images.items()}, recipe.scale)
            stores = store(folder, 'right', given), store(folder, 'swapped', given, degs)
            tests[set_name, deg.name] = (*pairs, *stores)
    emb = encoder.encode_text([d.caption for d in degs])
    return dict(train=train, tests=tests, prompt_dim=encoder.embed_dim, degradations=degs, caption_embeddings=emb)


def caption_lines(degs):
    """A line per degradation of ``degs``: what it is, and its right and wrong (:func:`swapped`) caption."""
    wrong = {d.name: cdeg.swapped(degs, d).caption for d in degs}
    return [f'{d.name}: {d.describe()}, right caption "{d.caption}", wrong caption "{wrong[d.name]}"' for d in degs]


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
    r, prompted = recipe, kind == 'plus'
    net_type = NETWORK_PAIRS[r.network][1 if prompted else 0]
    size = dict(num_feat=r.num_feat, num_block=r.num_block)
    if r.network == 'RRDBNet':
        size['num_grow_ch'] = r.num_feat // 2  # ESRGAN's 64 / 32
    network_g = opts.network(net_type, r.scale, prompt_dim, r.dcm if prompted else None, **size)
    n_train = len(train['assignment'])
    # A few dozen tiles are fewer than some batches; basicsr drops the last incomplete batch: repeat the list.
    enlarge = max(1, -(-2 * r.batch // n_train))
    dataset_args = (r.dataset_name, train['hr'], train['lr'], r.gt_size, r.batch, train['prompts'], prompted)
    temperature = dict(init=34, step=3, every_epochs=temperature_every(r, n_train, enlarge), min=1)
    steps = dict(warmup_iter=r.warmup, ema_decay=r.ema_decay, betas=r.betas, eta_min=r.eta_min, temperature=temperature)
    log = dict(print_freq=max(1, r.iters // r.log_lines), checkpoint_freq=10**9 if r.demo_names else None)
    train_set = opts.train_dataset(*dataset_args, enlarge=enlarge)
    opt = opts.train_options(f'demo_{kind}', network_g, train_set, r.scale, r.iters, r.lr, seed=seed, **steps, **log)
    if not r.demo_names:  # named after the whole recipe: a changed recipe never reuses an old run
        opt['name'] = hashed_name(f'info_{net_type}_seed{seed}', opt)
    return opt


# ---------------------------------------------------------------------------------------------------------------------
# evaluation
def score(sr, gt, scale):
    """(PSNR, SSIM) of uint8 BGR ``sr`` against ``gt``: Y channel, ``scale`` border pixels cropped."""
    return calculate_psnr(sr, gt, scale, test_y_channel=True), calculate_ssim(sr, gt, scale, test_y_channel=True)


def evaluate(opt_path, weights, tests, scale, prompted, keep_images=False):
    """Scores and diagnostics of one trained network on every test condition.

    Returns:
        dict: ``scores[set][degradation][mode] = [(psnr, ssim), ...]`` per image (modes :data:`PLUS_MODES` for a
        "+" network, ``baseline`` otherwise); for a "+" network ``diag[degradation]``: the router weights ``pi``
        under the right and the swapped caption (per DCM), and per mode the mean mask, its saturated share, and the
        mean |mask(right) - mask(swapped)| (per DCM); ``temperature``, ``zeta``. With ``keep_images``, of the last
        image of each set, ``images[set][degradation]``: {mode: uint8 BGR SR image, 'hr' / 'lr': HR / LR image, 'masks':
        {mode: {dcm: (h, w) mask}}}.
    """
    up = Upsampler.from_checkpoint(weights, opt_path, 'cpu')
    if prompted:  # the test prompts must come from the embedding space the model was trained in
        for *_, store, _swapped in tests.values():
            provenance.check_same_space(
                up.trained_encoder, provenance.encoder_record(PromptStore(store).meta), weights, store
            )
    dcms = dcm_modules(up.net)
    attention = prompted and all(d.use_attention for d in dcms)  # DCMs built without attention have no mask
    out = {'scores': {}, 'diag': {}}
    for (set_name, deg_name), (hr, lr, *stores) in tests.items():
        # The test folder as the dataset class reads it (validation form: each image's first prompt).
        sets = [dict(opts.dataset('test', hr, lr, store, prompted=True), phase='val', scale=scale) for store in stores]
        right, wrong = map(PromptPairedImageDataset, sets)
        cell = out['scores'].setdefault(set_name, {}).setdefault(deg_name, {})
        diag = out['diag'].setdefault(deg_name, {'mask': {}, 'saturated': {}, 'right_vs_swapped': []})
        for i in range(len(right)):
            # An odd LR size for RRDBNet at x2 is reflection-padded and cropped back (input_multiple).
            item, gt, modes = right[i], tensor2img(right[i]['gt']), {'baseline': None}
            lr_bgr = tensor2img(item['lq'])
            if prompted:
                modes = {'right': item['prompt'], 'swapped': wrong[i]['prompt'], 'zero': None}
                with torch.no_grad():
                    pi = {m: [d.kernel_weights(modes[m][None])[0].tolist() for d in dcms] for m in PLUS_MODES[:2]}
                    diag['pi'] = pi
            srs, masks = {}, {}
            for mode, prompt in modes.items():
                result = up.enhance(lr_bgr[..., ::-1], prompt, attention=attention)
                sr, masks[mode] = result if attention else (result, {})
                srs[mode] = np.ascontiguousarray(sr[..., ::-1])
                cell.setdefault(mode, []).append(score(srs[mode], gt, scale))
            if keep_images:  # the last image's are the ones left
                kept = dict(srs, hr=gt, lr=lr_bgr, masks=masks)
                out.setdefault('images', {}).setdefault(set_name, {})[deg_name] = kept
            if attention:
                for key, stat in MASK_STATS.items():
                    for mode, m in masks.items():
                        diag[key].setdefault(mode, []).append([float(stat(m[j])) for j in sorted(m)])
                m, s = masks['right'], masks['swapped']
                diag['right_vs_swapped'].append([float(np.abs(m[j] - s[j]).mean()) for j in sorted(m)])
    for diag in out['diag'].values():  # per-image lists -> means per DCM
        diag.update({key: {mode: np.mean(v, axis=0).tolist() for mode, v in diag[key].items()} for key in MASK_STATS})
        diffs = diag['right_vs_swapped']
        diag['right_vs_swapped'] = np.mean(diffs, axis=0).tolist() if diffs else []
    out['temperature'] = sorted({float(d.temperature) for d in dcms})
    out['zeta'] = [float(d.zeta.detach()) for d in dcms if hasattr(d, 'zeta')]
    return out


def router_spread(diag):
    """Max over DCMs of the mean |pi(right) - pi(swapped)| (over kernels and degradations): how much the router's
    kernel mixture follows the caption (0 = not at all)."""
    per_deg = [np.abs(np.subtract(d['pi']['right'], d['pi']['swapped'])).mean(axis=1) for d in diag.values()]
    return float(np.max(np.mean(per_deg, axis=0)))
