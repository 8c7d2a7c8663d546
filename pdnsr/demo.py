"""The demo: train a small EDSR+ and the same EDSR without prompts on scikit-image's photos, then compare them.

    python scripts/demo.py                      # about 3 minutes on 2 CPU cores; writes demo_output/
    python scripts/demo.py --quick              # a smoke run of a few tens of iterations (the test suite's)
    python scripts/demo.py --clip-pretrained /path/to/open_clip_model.bin   # real CLIP weights

Nothing is downloaded. The training photos are the colour photos bundled with scikit-image
(:func:`pdnsr.utils.sample_data.sample_photos`) with the captions of ``SAMPLE_CAPTIONS`` as text prompts; one photo
(``chelsea``, the cat) is held back and super-resolved at the end. The run goes through the real stack: a prompt
LMDB built by :func:`pdnsr.prompts.build.build_prompt_store`, basicsr option files, ``pdnsr/train.py`` in
subprocesses, and :mod:`pdnsr.inference`. See docs/demo.md.

Unless ``--clip-pretrained`` names real weights, CLIP runs with random weights: each caption then maps to a fixed
but meaningless vector, and a difference between EDSR+ and EDSR says nothing about prompt guidance.
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
import yaml
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils.matlab_functions import imresize

from pdnsr.inference import (
    build_network_from_options,
    image_to_tensor,
    load_weights,
    super_resolve,
    tensor_to_bgr,
    write_png,
)
from pdnsr.prompts.build import build_prompt_store, read_rgb
from pdnsr.prompts.encoder import RANDOM_TAGS, PromptEncoder
from pdnsr.utils.sample_data import SAMPLE_CAPTIONS, sample_photos, write_pairs
from pdnsr.utils.visualization import overlay_heatmap

HOLDOUT = 'chelsea'  # the cat: no other photo shows an animal, so nothing of it is seen in training
UNRELATED_CAPTION = 'a red double-decker bus driving down a busy city street in the rain'
SCALE = 2

# Both networks train with one recipe; only the network type and the dataset type (prompts or not) differ.
# The default was timed on a 2-core CPU shared with other jobs (docs/demo.md); 'quick' is for the test suite.
RECIPES = {
    'default': dict(
        num_feat=32,
        num_block=8,
        gt_size=48,
        batch_size=8,
        iters=300,
        lr=1e-3,
        ema_decay=0.9,
        train_crop=320,
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
        warmup_iter=4,
    ),
}
NETWORKS = {'baseline': 'EDSR', 'plus': 'EDSRPlus'}
LABELS = {'baseline': 'EDSR', 'plus': 'EDSR+'}

# Picture layout: panels of CROP HR pixels shown ZOOM times larger (nearest neighbour keeps pixels visible), a
# label strip above each, GAP pixels between them.
CROP = 128
ZOOM = 2
LABEL_H = 28
GAP = 4

_LOG_LINE = re.compile(r'iter:\s*([\d,]+).*?\[eta: ([^,\]]+)')
_LOG_VALUE = re.compile(r'(l_pix|temperature): ([-+0-9.e]+)')


class DemoError(Exception):
    """A problem the user can fix (bad option, unloadable CLIP weights): reported as one line, exit status 2."""


class TrainingFailed(Exception):
    """A ``pdnsr/train.py`` run exited with an error; the message holds the tail of its log."""


# ---------------------------------------------------------------------------------------------------------------------
# command line
def build_parser(prog='pdnsr-demo'):
    parser = argparse.ArgumentParser(
        prog=prog,
        description='Train a small EDSR+ (prompt-guided) and EDSR (no prompt) on the photos bundled with '
        'scikit-image, super-resolve a held-out photo with both, and compare them. CPU only, nothing downloaded.',
    )
    parser.add_argument('--output', default='demo_output', help='output folder (default demo_output)')
    parser.add_argument('--quick', action='store_true', help='tiny networks, tens of iterations: a smoke test')
    parser.add_argument('--iters', type=int, help='training iterations of each network (overrides the recipe)')
    parser.add_argument('--seed', type=int, default=0, help='seed of training and of random CLIP weights (default 0)')
    parser.add_argument('--clip-model', default='ViT-B-32', help='open_clip architecture (default ViT-B-32)')
    parser.add_argument(
        '--clip-pretrained',
        default='none',
        help="open_clip pretrained tag or local checkpoint file; default 'none' = random weights (nothing to "
        'download, but the prompts carry no meaning)',
    )
    return parser


def banner(random_clip, clip_model, clip_pretrained):
    """The lines printed first and repeated under the table: what the prompts are worth in this run."""
    if random_clip:
        return [
            f'NOTE: CLIP ({clip_model}) runs with RANDOM weights (--clip-pretrained none, the default).',
            'Each caption becomes a fixed but meaningless vector, so a gain or a loss of EDSR+',
            'over EDSR is not evidence either way. Pass --clip-pretrained with an open_clip tag or',
            'a local checkpoint file for prompts that mean something.',
        ]
    return [f'CLIP ({clip_model}) runs with pretrained weights {clip_pretrained!r}.']


def stage(step, total, text):
    print(f'[{step}/{total}] {text}', flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# data, prompts and options
def prepare_data(data_dir, recipe):
    """Write the training pairs (every photo but ``HOLDOUT``) and the test pair; returns their folders."""
    photos = sample_photos()
    test = {HOLDOUT: photos.pop(HOLDOUT)}
    # A centre crop keeps the largest photos (retina is 1411 px square) from dominating PNG decoding time.
    train_hr, train_lr = write_pairs(photos, os.path.join(data_dir, 'train'), SCALE, crop=recipe['train_crop'])
    test_hr, test_lr = write_pairs(test, os.path.join(data_dir, 'test'), SCALE)
    return dict(train_hr=train_hr, train_lr=train_lr, test_hr=test_hr, test_lr=test_lr, train_keys=sorted(photos))


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


def make_options(kind, data, store, recipe, iters, seed, prompt_dim):
    """basicsr option dict of one demo run: ``kind`` is 'baseline' (EDSR) or 'plus' (EDSR+)."""
    plus = kind == 'plus'
    dataset = dict(
        name='skimage_photos',
        type='PromptPairedImageDataset' if plus else 'PairedImageDataset',
        dataroot_gt=data['train_hr'],
        dataroot_lq=data['train_lr'],
        io_backend=dict(type='disk'),
        gt_size=recipe['gt_size'],
        use_hflip=True,
        use_rot=True,
        num_worker_per_gpu=0,
        batch_size_per_gpu=recipe['batch_size'],
        # Seven photos are fewer than a batch, and basicsr drops the last incomplete batch: repeat the list.
        dataset_enlarge_ratio=8,
        prefetch_mode=None,
    )
    if plus:
        dataset['dataroot_prompt'] = store
    network = dict(
        type=NETWORKS[kind], num_in_ch=3, num_out_ch=3, num_feat=recipe['num_feat'], num_block=recipe['num_block'],
        upscale=SCALE,
    )  # fmt: skip
    if plus:
        network['prompt_dim'] = prompt_dim
    epochs = iters / max(1, (len(data['train_keys']) * dataset['dataset_enlarge_ratio']) // recipe['batch_size'])
    return dict(
        name=f'demo_{kind}',
        model_type='PDNModel',
        scale=SCALE,
        num_gpu=0,
        manual_seed=seed,
        datasets=dict(train=dataset),
        network_g=network,
        path=dict(pretrain_network_g=None, strict_load_g=True, resume_state=None),
        train=dict(
            ema_decay=recipe['ema_decay'],
            optim_g=dict(type='Adam', lr=recipe['lr'], betas=[0.9, 0.999]),
            scheduler=dict(type='CosineAnnealingRestartLR', periods=[iters], restart_weights=[1], eta_min=1e-6),
            total_iter=iters,
            # A linear warm-up: at this learning rate the DCMs' 512-wide kernel banks destabilise early training
            # without it (measured: EDSR+ 1.2 dB below EDSR after 300 iterations without, on par with it).
            warmup_iter=recipe['warmup_iter'],
            pixel_opt=dict(type='L1Loss', loss_weight=1.0, reduction='mean'),
            # The paper's 34 -> 1 in steps of 3, squeezed into the first ~2/3 of this short run (11 steps). It
            # only touches networks with DCMs, so the baseline's identical entry is inert.
            temperature=dict(init=34, step=3, every_epochs=max(1, int(epochs * 2 / 3 / 11)), min=1),
        ),
        logger=dict(print_freq=max(1, iters // 10), save_checkpoint_freq=10**9, use_tb_logger=False),
    )


def write_yaml(opt, path):
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(opt, f, sort_keys=False)


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
def load_network(opt_path, root, name):
    net = build_network_from_options(opt_path)
    load_weights(net, os.path.join(root, 'experiments', name, 'models', 'net_g_latest.pth'))
    return net.eval()


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


def comparison_picture(images, scores, size):
    """The ``comparison.png`` row: LR (nearest), bicubic, EDSR, EDSR+, HR, cropped where bicubic errs most.

    Args:
        images (dict[str, np.ndarray]): uint8 BGR 'lr' (LR size) and 'bicubic', 'baseline', 'plus', 'hr' (HR size).
        scores (dict[str, tuple[float, float]]): (PSNR, SSIM) of the whole image per key.
        size (int): crop side in HR pixels.
    """
    top, left = worst_window(images['bicubic'], images['hr'], size)
    lr_up = cv2.resize(images['lr'], None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_NEAREST)
    names = [
        ('lr', f'LR x{SCALE} (nearest)', lr_up),
        ('bicubic', 'bicubic', images['bicubic']),
        ('baseline', LABELS['baseline'], images['baseline']),
        ('plus', LABELS['plus'], images['plus']),
        ('hr', 'HR', images['hr']),
    ]
    panels = []
    for key, title, img in names:
        crop = img[top : top + size, left : left + size]
        crop = cv2.resize(crop, None, fx=ZOOM, fy=ZOOM, interpolation=cv2.INTER_NEAREST)
        text = f'{title} {scores[key][0]:.2f} dB' if key in scores else title
        panels.append(labelled(crop, text))
    return side_by_side(panels), (top, left)


def attention_picture(overlays):
    """2 x 2 grid: rows = prompts, columns = DCMs; ``overlays`` is ``[[(label, image), ...], ...]`` by row."""
    rows = [side_by_side([labelled(img, text) for text, img in row]) for row in overlays]
    gap = np.full((GAP, rows[0].shape[1], 3), 255, np.uint8)
    out = []
    for i, row in enumerate(rows):
        out += [gap, row] if i else [row]
    return np.concatenate(out, axis=0)


def markdown_table(rows, caption):
    """The result table: ``rows`` of (method, PSNR, SSIM), then the caption as an italic paragraph."""
    lines = ['| method | PSNR (dB) | SSIM |', '|---|---:|---:|']
    lines += [f'| {name} | {psnr:.2f} | {ssim:.4f} |' for name, psnr, ssim in rows]
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

    stage(1, total, f'encoding captions with CLIP {args.clip_model} (pretrained={args.clip_pretrained})')
    encoder = make_encoder(args.clip_model, args.clip_pretrained, args.seed)
    data = prepare_data(os.path.join(out, 'data'), recipe)
    store = os.path.join(out, 'data', 'prompts_text.lmdb')
    build_prompt_store(
        'text', store, encoder, captions={k: SAMPLE_CAPTIONS[k] for k in data['train_keys']}, progress=False
    )
    true_caption = SAMPLE_CAPTIONS[HOLDOUT][0]
    test_prompts = {'true': encoder.encode_text([true_caption]), 'unrelated': encoder.encode_text([UNRELATED_CAPTION])}
    prompt_dim = encoder.embed_dim
    del encoder  # ~600 MB of CLIP weights are not needed during training
    print(
        f'    {len(data["train_keys"])} training photos ({", ".join(data["train_keys"])}), held out: {HOLDOUT}; '
        f'prompt store {os.path.join(args.output, "data", "prompts_text.lmdb")}',
        flush=True,
    )

    stage(2, total, f'training {LABELS["baseline"]} and {LABELS["plus"]} ({iters} iterations each, both at once)')
    os.makedirs(os.path.join(out, 'options'), exist_ok=True)
    runs = []
    for kind in ('baseline', 'plus'):
        opt_path = os.path.join(out, 'options', f'train_demo_{kind}.yml')
        write_yaml(make_options(kind, data, store, recipe, iters, args.seed, prompt_dim), opt_path)
        runs.append((LABELS[kind], opt_path))
    print(f'    option files in {os.path.join(args.output, "options")}', flush=True)
    t_train = time.time()
    train_all(runs, out, iters)
    t_train = time.time() - t_train

    stage(3, total, f'super-resolving the held-out photo {HOLDOUT!r} x{SCALE}')
    torch.set_num_threads(min(2, torch.get_num_threads()))
    hr = cv2.imread(os.path.join(data['test_hr'], f'{HOLDOUT}.png'), cv2.IMREAD_COLOR)
    lr_rgb = read_rgb(os.path.join(data['test_lr'], f'{HOLDOUT}.png'))
    lq = image_to_tensor(lr_rgb, 'cpu')
    baseline = load_network(runs[0][1], out, 'demo_baseline')
    plus = load_network(runs[1][1], out, 'demo_plus')
    images = {'lr': lr_rgb[..., ::-1].copy(), 'hr': hr, 'bicubic': bicubic_up(lr_rgb[..., ::-1])}
    images['baseline'] = tensor_to_bgr(super_resolve(baseline, lq, scale=SCALE))
    sr, masks = {}, {}
    for which, prompt in test_prompts.items():
        result, masks[which] = super_resolve(plus, lq, prompt, keep_attention=True, scale=SCALE)
        sr[which] = tensor_to_bgr(result)
    images['plus'] = sr['true']
    scores = {key: metrics(images[key], hr) for key in ('bicubic', 'baseline', 'plus')}
    scores['plus_unrelated'] = metrics(sr['unrelated'], hr)
    for key in ('baseline', 'plus'):
        write_png(os.path.join(out, f'{HOLDOUT}_x{SCALE}_{key}.png'), images[key])

    stage(4, total, 'writing comparison.png and attention maps')
    size = min(CROP, hr.shape[0], hr.shape[1])
    picture, (top, left) = comparison_picture(images, scores, size)
    write_png(os.path.join(out, 'comparison.png'), picture)
    dcm_ids = sorted(masks['true'])
    first, last = dcm_ids[0], dcm_ids[-1]
    grid, spread = [], []
    for which in ('true', 'unrelated'):
        row = []
        for i in (first, last):
            overlay = overlay_heatmap(sr[which], masks[which][i][0, 0])
            write_png(os.path.join(out, f'attention_dcm{i}_{which}.png'), overlay)
            row.append((f'DCM {i}, {which} caption', overlay))
        grid.append(row)
    write_png(os.path.join(out, 'attention.png'), attention_picture(grid))
    for i in (first, last):
        a, b = masks['true'][i], masks['unrelated'][i]
        spread.append(f'DCM {i}: mean {a.mean():.3f} / {b.mean():.3f}, mean |difference| {(a - b).abs().mean():.4f}')
    print(f'    crop at (top {top}, left {left}), {size} px; attention true / unrelated caption:', flush=True)
    for line in spread:
        print(f'      {line}', flush=True)

    stage(5, total, 'results')
    rows = [
        ('bicubic', *scores['bicubic']),
        (f'{LABELS["baseline"]} (baseline, no prompt)', *scores['baseline']),
        (f'{LABELS["plus"]} (true caption)', *scores['plus']),
        (f'{LABELS["plus"]} (unrelated caption)', *scores['plus_unrelated']),
    ]
    caption = (
        f'x{SCALE} SR of the held-out photo `{HOLDOUT}` ({hr.shape[1]}x{hr.shape[0]}), PSNR/SSIM on the Y channel with '
        f'{SCALE} border pixels cropped, after {iters} iterations on {len(data["train_keys"])} photos '
        f'({recipe["num_block"]} blocks, {recipe["num_feat"]} features, seed {args.seed}). True caption: '
        f'"{true_caption}"; unrelated caption: "{UNRELATED_CAPTION}".\n\n' + ' '.join(notice)
    )
    table = markdown_table(rows, caption)
    print(table, flush=True)
    with open(os.path.join(out, 'results.md'), 'w', encoding='utf-8') as f:
        f.write(table + '\n')
    print(
        f'\nOutputs in {args.output}/: comparison.png, attention.png (+ one file per DCM and caption), results.md, '
        f'SR images, option files, experiments/. Training {t_train:.0f} s, total {time.time() - t_start:.0f} s.',
        flush=True,
    )
    return 0


def main(argv=None, prog=None):
    """Entry point of ``scripts/demo.py`` / ``pdnsr-demo``; returns the exit status.

    0: done; 1: a training run failed (its log's tail is printed); 2: a user error, one line on stderr.
    """
    prog = prog or 'pdnsr-demo'
    try:
        args = build_parser(prog).parse_args(argv)
    except SystemExit as err:  # argparse has printed the usage line
        return int(err.code or 0)
    try:
        return run(args)
    except DemoError as err:
        print(f'{prog}: error: {err}', file=sys.stderr)
        return 2
    except TrainingFailed as err:
        print(f'{prog}: {err}', file=sys.stderr)
        return 1
