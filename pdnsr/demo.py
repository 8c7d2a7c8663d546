"""The demo: train EDSR and EDSR+ on photos whose LR versions carry different blurs, with captions that say which.

    python scripts/demo.py                      # about 2 minutes on 2 CPU cores; writes demo_output/
    python scripts/demo.py --quick              # a smoke run of a few tens of iterations (the test suite's)
    python scripts/demo.py --clip-pretrained /path/to/open_clip_model.bin   # real CLIP weights

Nothing is downloaded. The training photos are the colour photos bundled with scikit-image
(:func:`pdnsr.utils.sample_data.sample_photos`), cut into tiles; each tile's LR image is made with one of two blurs
(Gaussian sigma 0.4 or 2.0 before MATLAB bicubic x2) and captioned "a sharp photo" or "a blurry photo"
(:mod:`pdnsr.data.captioned_degradations`, shared with ``benchmarks/bench_prompt_information.py``). The caption
carries what the LR image hides -- how much to sharpen -- so EDSR+ can learn to read it, while EDSR has to guess.
One photo (``chelsea``, the cat) is held back and super-resolved under each blur with the right and the wrong
caption. The run goes through the real stack: a prompt LMDB built by
:func:`pdnsr.prompts.build.build_prompt_store`, basicsr option files from :mod:`pdnsr.options`,
``pdnsr/train.py`` in subprocesses, and :mod:`pdnsr.inference`. See docs/demo.md.

CLIP runs with random weights unless ``--clip-pretrained`` names real ones: each caption is then a fixed vector that
means nothing to CLIP, but training ties it to one blur. With real weights, content captions ("a ginger cat")
work through the same path (the paper's setting).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import warnings

import cv2
import numpy as np
import torch
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils.matlab_functions import imresize

from pdnsr import options as opts
from pdnsr.cli import add_clip_arguments, run_main
from pdnsr.data.captioned_degradations import (
    assign_degradations,
    captions_of,
    get_degradations,
    swapped,
    write_degraded_pair,
)
from pdnsr.data.image_files import read_rgb, write_image
from pdnsr.errors import UserError
from pdnsr.inference import image_to_tensor, load_network, super_resolve, tensor_to_bgr
from pdnsr.prompts.build import build_prompt_store
from pdnsr.prompts.encoder import RANDOM_TAGS, PromptEncoder
from pdnsr.utils.sample_data import sample_photos
from pdnsr.utils.visualization import overlay_heatmap

HOLDOUT = 'chelsea'  # the cat: no other photo shows an animal, so nothing of it is seen in training
SCALE = 2
DEGRADATIONS = get_degradations('blur')  # sharp (sigma 0.4) and blurry (sigma 2.0), captions naming them

# Both networks train with one recipe; only the network type and the dataset type (prompts or not) differ.
# The default was timed on a 2-core CPU shared with other jobs (docs/demo.md); 'quick' is for the test suite.
RECIPES = {
    'default': dict(
        num_feat=32,
        num_block=4,
        gt_size=48,
        batch_size=16,
        iters=600,
        lr=1e-3,
        ema_decay=0.9,
        train_crop=400,
        tile=80,
        warmup_iter=60,
    ),
    'quick': dict(
        num_feat=16,
        num_block=2,
        gt_size=32,
        batch_size=4,
        iters=20,
        lr=1e-3,
        ema_decay=0.9,
        train_crop=128,
        tile=64,
        warmup_iter=4,
    ),
}
NETWORKS = {'baseline': 'EDSR', 'plus': 'EDSRPlus'}
LABELS = {'baseline': 'EDSR', 'plus': 'EDSR+'}
# The four methods of the table and of comparison.png, in order.
METHODS = (
    ('bicubic', 'bicubic'),
    ('baseline', 'EDSR (no prompt)'),
    ('right', 'EDSR+ right caption'),
    ('wrong', 'EDSR+ wrong caption'),
)

# Picture layout: panels of CROP HR pixels shown ZOOM times larger (nearest neighbour keeps pixels visible), a
# label strip above each, GAP pixels between them.
CROP = 128
ZOOM = 2
LABEL_H = 28
GAP = 4

_LOG_LINE = re.compile(r'iter:\s*([\d,]+).*?\[eta: ([^,\]]+)')
_LOG_VALUE = re.compile(r'(l_pix|temperature): ([-+0-9.e]+)')


class DemoError(UserError):
    """A problem the user can fix (bad option, unloadable CLIP weights): reported as one line, exit status 2."""


class TrainingFailed(Exception):
    """A ``pdnsr/train.py`` run exited with an error; the message holds the tail of its log."""


# ---------------------------------------------------------------------------------------------------------------------
# command line
def build_parser(prog='pdnsr-demo'):
    parser = argparse.ArgumentParser(
        prog=prog,
        description='Train EDSR (no prompt) and EDSR+ (prompt-guided) on photos whose LR versions carry one of two '
        'blurs, with captions naming the blur; super-resolve a held-out photo under each blur with the right and '
        'the wrong caption. CPU only, nothing downloaded.',
    )
    parser.add_argument('--output', default='demo_output', help='output folder (default demo_output)')
    parser.add_argument('--quick', action='store_true', help='tiny networks, tens of iterations: a smoke test')
    parser.add_argument('--iters', type=int, help='training iterations of each network (overrides the recipe)')
    parser.add_argument('--seed', type=int, default=0, help='seed of training and of random CLIP weights (default 0)')
    # Random weights by default: nothing to download, and the captions still work here (they name the blur and
    # training ties each to it).
    add_clip_arguments(parser, pretrained='none')
    return parser


def banner(random_clip, clip_model, clip_pretrained):
    """The lines printed first and repeated under the table: what the captions carry in this run."""
    kinds = '; '.join(f'"{d.caption}" = {d.describe()}' for d in DEGRADATIONS)
    lines = [
        f'WHAT THE CAPTIONS CARRY: each LR image was made with one of two blurs before bicubic x{SCALE}, and its',
        f'caption names the blur, not the content ({kinds}).',
        'EDSR+ reads the caption; EDSR sees only the image and has to guess how much to sharpen.',
    ]
    if random_clip:
        lines += [
            f'CLIP ({clip_model}) runs with RANDOM weights (--clip-pretrained none, the default): each caption is a',
            'fixed vector that means nothing to CLIP, and training ties it to its blur. With real CLIP weights',
            '(--clip-pretrained), content captions ("a ginger cat") work through this same path: the paper\'s setting.',
        ]
    else:
        lines.append(f'CLIP ({clip_model}) runs with pretrained weights {clip_pretrained!r}.')
    return lines


def stage(step, total, text):
    print(f'[{step}/{total}] {text}', flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# data, prompts and options
def tiles(img, size):
    """Non-overlapping ``size`` x ``size`` tiles of ``img`` in row order."""
    return [
        img[top : top + size, left : left + size]
        for top in range(0, img.shape[0] - size + 1, size)
        for left in range(0, img.shape[1] - size + 1, size)
    ]


def prepare_data(data_dir, recipe, seed):
    """Write the training tiles (every photo but ``HOLDOUT``, one blur per tile) and the held-out photo under each
    blur. Returns the folders, the training assignment ``{key: Degradation}`` and the training photo names."""
    photos = sample_photos()
    test = photos.pop(HOLDOUT)
    train_hr, train_lr = os.path.join(data_dir, 'train', 'HR'), os.path.join(data_dir, 'train', f'LRx{SCALE}')
    for folder in (train_hr, train_lr):
        os.makedirs(folder, exist_ok=True)
    crops = {}
    for name, rgb in sorted(photos.items()):
        # A centre crop keeps the largest photos (retina is 1411 px square) from dominating the tiles.
        size = recipe['train_crop']
        top, left = max(0, (rgb.shape[0] - size) // 2), max(0, (rgb.shape[1] - size) // 2)
        bgr = np.ascontiguousarray(rgb[top : top + size, left : left + size, ::-1])
        for index, tile in enumerate(tiles(bgr, recipe['tile']), 1):
            crops[f'{name}_s{index:03d}'] = tile
    assignment = assign_degradations(crops, DEGRADATIONS, seed=seed)
    for key, tile in crops.items():
        write_degraded_pair(tile, assignment[key], SCALE, key, train_hr, train_lr)
    tests = {}
    for deg in DEGRADATIONS:
        hr_dir, lr_dir = os.path.join(data_dir, 'test', deg.name, 'HR'), os.path.join(data_dir, 'test', deg.name, 'LR')
        os.makedirs(hr_dir, exist_ok=True)
        os.makedirs(lr_dir, exist_ok=True)
        write_degraded_pair(np.ascontiguousarray(test[..., ::-1]), deg, SCALE, HOLDOUT, hr_dir, lr_dir)
        tests[deg.name] = dict(hr=os.path.join(hr_dir, f'{HOLDOUT}.png'), lr=os.path.join(lr_dir, f'{HOLDOUT}.png'))
    return dict(train_hr=train_hr, train_lr=train_lr, tests=tests, photos=sorted(photos)), assignment


def make_encoder(clip_model, clip_pretrained, seed):
    """The CLIP prompt encoder; a model or weights that cannot be loaded is a user error."""
    pretrained = None if clip_pretrained in RANDOM_TAGS else clip_pretrained
    try:
        with warnings.catch_warnings():
            # The banner already says it; the encoder's logger warning stays in the log.
            warnings.filterwarnings('ignore', message='PromptEncoder: open_clip .* RANDOM weights')
            return PromptEncoder(clip_model, pretrained=pretrained, device='cpu', seed=seed)
    except RuntimeError as err:
        raise DemoError(' '.join(str(err).split())) from err


def make_options(kind, data, store, recipe, iters, seed, prompt_dim, n_train):
    """basicsr option dict of one demo run (:mod:`pdnsr.options`): ``kind`` is 'baseline' (EDSR) or 'plus'."""
    net_type = NETWORKS[kind]
    prompted = kind == 'plus'
    network_g = opts.network(
        net_type, SCALE, prompt_dim=prompt_dim, num_feat=recipe['num_feat'], num_block=recipe['num_block']
    )
    # A few dozen tiles are fewer than some batches; basicsr drops the last incomplete batch: repeat the list.
    enlarge = max(1, -(-2 * recipe['batch_size'] // n_train))
    train_set = opts.train_dataset(
        'skimage_tiles',
        data['train_hr'],
        data['train_lr'],
        recipe['gt_size'],
        recipe['batch_size'],
        prompts=store,
        prompted=prompted,
        enlarge=enlarge,
    )
    epochs = iters / max(1, (n_train * enlarge) // recipe['batch_size'])
    return opts.train_options(
        f'demo_{kind}',
        network_g,
        train_set,
        SCALE,
        iters,
        recipe['lr'],
        seed=seed,
        # A linear warm-up: at this learning rate the DCMs' 512-wide kernel banks destabilise early training
        # without it (docs/demo.md).
        warmup_iter=recipe['warmup_iter'],
        ema_decay=recipe['ema_decay'],
        eta_min=1e-6,
        # The paper's 34 -> 1 in steps of 3, squeezed into the first ~2/3 of this short run (11 steps). It only
        # touches networks with DCMs: the baseline's file has no temperature entry.
        temperature=dict(init=34, step=3, every_epochs=max(1, int(epochs * 2 / 3 / 11)), min=1),
        print_freq=max(1, iters // 10),
        checkpoint_freq=10**9,
    )


# ---------------------------------------------------------------------------------------------------------------------
# training
def _summarise(line, total):
    """One short progress line from a basicsr training log line, or None for the other log lines."""
    match = _LOG_LINE.search(line)
    if not match:
        return None
    values = dict(_LOG_VALUE.findall(line))
    text = f'iter {int(match.group(1).replace(",", "")):>5d}/{total}'
    if 'l_pix' in values:
        text += f'  l_pix {float(values["l_pix"]):.4f}'
    if 'temperature' in values:
        text += f'  T {float(values["temperature"]):g}'
    eta = match.group(2).strip()
    # basicsr's eta at the last iteration reads "-1 day, ..."; nothing is left then.
    return text if eta.startswith('-') else f'{text}  eta {eta}'


def train_all(runs, root, iters):
    """Train every ``(label, option file)`` of ``runs`` with ``pdnsr/train.py``, all at once, one thread each.

    Small convolutions scale poorly across threads, so on a few cores two single-threaded processes finish sooner
    than two consecutive two-threaded ones. basicsr's log lines are summarised as they come, prefixed by the label.

    Returns:
        dict[str, float]: seconds per label. Raises TrainingFailed with the log's tail if a run fails.
    """
    train_py = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py')
    env = dict(os.environ, PDNSR_ROOT=root, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    width = max(len(label) for label, _ in runs)
    lock = threading.Lock()
    procs, threads, tails, seconds = {}, [], {}, {}

    def follow(label, proc, start):
        tail = tails[label] = []
        for line in proc.stdout:
            tail[:] = (tail + [line.rstrip()])[-40:]
            summary = _summarise(line, iters)
            if summary:
                with lock:
                    print(f'    {label:<{width}}  {summary}', flush=True)
        proc.wait()
        seconds[label] = time.time() - start

    for label, opt_path in runs:
        proc = subprocess.Popen(
            [sys.executable, train_py, '-opt', opt_path],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs[label] = proc
        thread = threading.Thread(target=follow, args=(label, proc, time.time()), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    for label, proc in procs.items():
        if proc.returncode != 0:
            raise TrainingFailed(
                f'training {label} failed (exit status {proc.returncode}); last lines of its log:\n'
                + '\n'.join(tails.get(label, []))
            )
        print(f'    {label:<{width}}  done in {seconds[label]:.0f} s', flush=True)
    return seconds


# ---------------------------------------------------------------------------------------------------------------------
# evaluation and pictures
def trained_network(opt_path, root, name):
    """The network of option file ``opt_path`` with the final weights of run ``name`` (eval mode, CPU)."""
    net, _ = load_network(opt_path, os.path.join(root, 'experiments', name, 'models', 'net_g_latest.pth'), 'cpu')
    return net


def metrics(img, hr):
    """(PSNR, SSIM) of uint8 BGR ``img`` against ``hr``: Y channel, ``SCALE`` border pixels cropped."""
    return (
        calculate_psnr(img, hr, crop_border=SCALE, input_order='HWC', test_y_channel=True),
        calculate_ssim(img, hr, crop_border=SCALE, input_order='HWC', test_y_channel=True),
    )


def bicubic_up(lr_bgr):
    """MATLAB-style bicubic upscaling (basicsr's ``imresize``) of a uint8 image."""
    up = imresize(lr_bgr.astype(np.float32) / 255.0, SCALE)
    return np.clip(np.rint(up * 255.0), 0, 255).astype(np.uint8)


def worst_window(bicubic, hr, size):
    """(top, left) of the ``size`` x ``size`` window where bicubic errs most: where SR has the most to recover."""
    err = np.abs(bicubic.astype(np.float32) - hr.astype(np.float32)).mean(axis=2)
    # Box sums of every window at once from the summed-area table.
    sat = np.pad(err.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = sat[size:, size:] - sat[:-size, size:] - sat[size:, :-size] + sat[:-size, :-size]
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(top), int(left)


def labelled(panel, text):
    """``panel`` (uint8 BGR) with a white strip of ``LABEL_H`` pixels above it holding ``text``."""
    strip = np.full((LABEL_H, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (4, LABEL_H - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


def side_by_side(panels):
    """Labelled panels of one height in a row, ``GAP`` white pixels apart."""
    gap = np.full((panels[0].shape[0], GAP, 3), 255, np.uint8)
    row = []
    for i, panel in enumerate(panels):
        row += [gap, panel] if i else [panel]
    return np.concatenate(row, axis=1)


def layout_size(panel_h, panel_w, cols, rows=1):
    """(height, width) of a grid of labelled panels as written by :func:`side_by_side` (rows stacked with GAP)."""
    return rows * (panel_h + LABEL_H) + (rows - 1) * GAP, cols * panel_w + (cols - 1) * GAP


def stack_rows(rows):
    """Rows of panels (arrays of one width) stacked top to bottom, ``GAP`` white pixels apart."""
    gap = np.full((GAP, rows[0].shape[1], 3), 255, np.uint8)
    out = []
    for i, row in enumerate(rows):
        out += [gap, row] if i else [row]
    return np.concatenate(out, axis=0)


def comparison_picture(images, scores, window):
    """``comparison.png``: one row per blur of the held-out photo: bicubic, EDSR, EDSR+ with the right caption,
    EDSR+ with the wrong caption, HR, cropped to ``window`` (top, left, size) and shown ``ZOOM`` times larger.

    Args:
        images (dict[str, dict[str, np.ndarray]]): per blur name, uint8 BGR HR-size images keyed by METHODS and 'hr'.
        scores (dict[str, dict[str, tuple[float, float]]]): per blur name, (PSNR, SSIM) of each method.
    """
    top, left, size = window
    rows = []
    for deg in DEGRADATIONS:
        panels = []
        for key, title in (*METHODS, ('hr', 'HR')):
            crop = images[deg.name][key][top : top + size, left : left + size]
            crop = cv2.resize(crop, None, fx=ZOOM, fy=ZOOM, interpolation=cv2.INTER_NEAREST)
            text = f'{deg.name}: {title}'
            if key in scores[deg.name]:
                text += f' {scores[deg.name][key][0]:.2f}'
            panels.append(labelled(crop, text))
        rows.append(side_by_side(panels))
    return stack_rows(rows)


def attention_picture(overlays):
    """Grid of labelled overlays: ``overlays`` is ``[[(label, image), ...], ...]`` by row."""
    return stack_rows([side_by_side([labelled(img, text) for text, img in row]) for row in overlays])


def markdown_table(scores, caption):
    """The result table: one row per method, PSNR / SSIM per blur, then the caption as a paragraph."""
    head = ' | '.join(f'{d.name} (σ {d.sigma:g}) PSNR | SSIM' for d in DEGRADATIONS)
    lines = [f'| method | {head} |', '|---' + '|---:|---:' * len(DEGRADATIONS) + '|']
    for key, title in METHODS:
        cells = ' | '.join(f'{scores[d.name][key][0]:.2f} | {scores[d.name][key][1]:.4f}' for d in DEGRADATIONS)
        lines.append(f'| {title} | {cells} |')
    return '\n'.join(lines) + '\n\n' + caption


# ---------------------------------------------------------------------------------------------------------------------
# the whole demo
def run(args):
    """The demo once arguments are parsed; returns the exit status. Raises DemoError for user errors."""
    t_start = time.time()
    recipe = dict(RECIPES['quick' if args.quick else 'default'])
    iters = args.iters if args.iters is not None else recipe['iters']
    if iters < 1:
        raise DemoError(f'--iters must be a positive number of iterations, got {iters}')
    out = os.path.abspath(args.output)
    if os.path.exists(out) and not os.path.isdir(out):
        raise DemoError(f'--output {args.output} exists and is not a folder')
    random_clip = args.clip_pretrained in RANDOM_TAGS
    notice = banner(random_clip, args.clip_model, args.clip_pretrained)
    print('\n'.join(notice), flush=True)
    total = 5

    # Runs start fresh; anything else in the output folder is left alone.
    os.makedirs(out, exist_ok=True)
    for sub in ('data', 'options', 'experiments/demo_baseline', 'experiments/demo_plus'):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)

    stage(1, total, f'blurring training tiles and encoding their captions with CLIP {args.clip_model} '
          f'(pretrained={args.clip_pretrained})')  # fmt: skip
    encoder = make_encoder(args.clip_model, args.clip_pretrained, args.seed)
    data, assignment = prepare_data(os.path.join(out, 'data'), recipe, args.seed)
    store = os.path.join(out, 'data', 'prompts_text.lmdb')
    build_prompt_store('text', store, encoder, captions=captions_of(assignment), progress=False)
    prompts = {d.name: encoder.encode_text([d.caption]) for d in DEGRADATIONS}
    prompt_dim = encoder.embed_dim
    del encoder  # ~600 MB of CLIP weights are not needed during training
    counts = ', '.join(f'{sum(v is d for v in assignment.values())} {d.name}' for d in DEGRADATIONS)
    print(
        f'    {len(assignment)} training tiles of {recipe["tile"]} px ({counts}) from {len(data["photos"])} photos '
        f'({", ".join(data["photos"])}); held out: {HOLDOUT}; prompt store '
        f'{os.path.join(args.output, "data", "prompts_text.lmdb")}',
        flush=True,
    )

    stage(2, total, f'training {LABELS["baseline"]} and {LABELS["plus"]} ({iters} iterations each, both at once)')
    os.makedirs(os.path.join(out, 'options'), exist_ok=True)
    runs = []
    for kind in ('baseline', 'plus'):
        opt = make_options(kind, data, store, recipe, iters, args.seed, prompt_dim, len(assignment))
        runs.append((LABELS[kind], opts.write_options(opt, os.path.join(out, 'options', f'train_demo_{kind}.yml'))))
    print(f'    option files in {os.path.join(args.output, "options")}', flush=True)
    t_train = time.time()
    train_all(runs, out, iters)
    t_train = time.time() - t_train

    stage(3, total, f'super-resolving the held-out photo {HOLDOUT!r} x{SCALE} under each blur')
    torch.set_num_threads(min(2, torch.get_num_threads()))
    baseline = trained_network(runs[0][1], out, 'demo_baseline')
    plus = trained_network(runs[1][1], out, 'demo_plus')
    images, scores, masks = {}, {}, {}
    for deg in DEGRADATIONS:
        hr = cv2.imread(data['tests'][deg.name]['hr'], cv2.IMREAD_COLOR)
        lr_rgb = read_rgb(data['tests'][deg.name]['lr'])
        lq = image_to_tensor(lr_rgb, 'cpu')
        imgs = {
            'hr': hr,
            'bicubic': bicubic_up(lr_rgb[..., ::-1]),
            'baseline': tensor_to_bgr(super_resolve(baseline, lq, scale=SCALE)),
        }
        masks[deg.name] = {}
        for which, prompt in (('right', prompts[deg.name]), ('wrong', prompts[swapped(DEGRADATIONS, deg).name])):
            result, masks[deg.name][which] = super_resolve(plus, lq, prompt, keep_attention=True, scale=SCALE)
            imgs[which] = tensor_to_bgr(result)
        images[deg.name] = imgs
        scores[deg.name] = {key: metrics(imgs[key], hr) for key, _ in METHODS}
        for key in ('baseline', 'right', 'wrong'):
            write_image(os.path.join(out, f'{HOLDOUT}_{deg.name}_x{SCALE}_{key}.png'), imgs[key])

    stage(4, total, 'writing comparison.png and attention.png')
    hr = images[DEGRADATIONS[-1].name]['hr']
    size = min(CROP, hr.shape[0], hr.shape[1])
    # One window for every row: where bicubic errs most on the most degraded input.
    top, left = worst_window(images[DEGRADATIONS[-1].name]['bicubic'], hr, size)
    write_image(os.path.join(out, 'comparison.png'), comparison_picture(images, scores, (top, left, size)))
    dcm_ids = sorted(masks[DEGRADATIONS[0].name]['right'])
    first, last = dcm_ids[0], dcm_ids[-1]
    grid, spread = [], []
    for deg in DEGRADATIONS:
        row = []
        for i in (first, last):
            for which in ('right', 'wrong'):
                overlay = overlay_heatmap(images[deg.name][which], masks[deg.name][which][i][0, 0])
                write_image(os.path.join(out, f'attention_{deg.name}_dcm{i}_{which}.png'), overlay)
                row.append((f'{deg.name} input, DCM {i}, {which} caption', overlay))
            a, b = masks[deg.name]['right'][i], masks[deg.name]['wrong'][i]
            spread.append(
                f'{deg.name} input, DCM {i}: mean mask {a.mean():.3f} (right) / {b.mean():.3f} (wrong), '
                f'mean |difference| {(a - b).abs().mean():.3f}'
            )
        grid.append(row)
    write_image(os.path.join(out, 'attention.png'), attention_picture(grid))
    print(f'    comparison crop at (top {top}, left {left}), {size} px; attention masks, right / wrong caption:')
    for line in spread:
        print(f'      {line}', flush=True)

    stage(5, total, 'results')
    captions = '; '.join(
        f'{d.name}: {d.describe()}, right caption "{d.caption}", wrong caption "{swapped(DEGRADATIONS, d).caption}"'
        for d in DEGRADATIONS
    )
    caption = (
        f'x{SCALE} SR of the held-out photo `{HOLDOUT}` ({hr.shape[1]}x{hr.shape[0]}) under each blur, PSNR (dB) / '
        f'SSIM on the Y channel with {SCALE} border pixels cropped, after {iters} iterations on '
        f'{len(assignment)} tiles of {len(data["photos"])} photos ({recipe["num_block"]} blocks, '
        f'{recipe["num_feat"]} features, seed {args.seed}). {captions}.\n\n' + ' '.join(notice)
    )
    table = markdown_table(scores, caption)
    print(table, flush=True)
    tmp = os.path.join(out, 'results.md.tmp')
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(table + '\n')
    os.replace(tmp, os.path.join(out, 'results.md'))
    print(
        f'\nOutputs in {args.output}/: comparison.png, attention.png (+ one file per blur, DCM and caption), '
        f'results.md, SR images, option files, experiments/. Training {t_train:.0f} s, total '
        f'{time.time() - t_start:.0f} s.',
        flush=True,
    )
    return 0


def main(argv=None, prog=None):
    """Entry point of ``scripts/demo.py`` / ``pdnsr-demo``; returns the exit status.

    0: done; 1: a training run failed (its log's tail is printed); 2: a user error, one line on stderr
    (:func:`pdnsr.cli.run_main`).
    """
    prog = prog or 'pdnsr-demo'

    def body():
        args = build_parser(prog).parse_args(argv)
        try:
            return run(args)
        except TrainingFailed as err:
            print(f'{prog}: {err}', file=sys.stderr)
            return 1

    return run_main(body, prog)
