"""The demo: train EDSR and EDSR+ on photos whose LR versions carry different blurs, with captions that say which.

    python scripts/demo.py                      # about 2 minutes on 2 CPU cores; writes demo_output/
    python scripts/demo.py --quick              # a smoke run of a few tens of iterations (the test suite's)
    python scripts/demo.py --clip-pretrained /path/to/open_clip_model.bin   # real CLIP weights

The small preset of :mod:`pdnsr.tools.experiments.prompt_information` (which says what the captions carry), on
the colour photos bundled with scikit-image cut into tiles; one photo (``chelsea``, the cat) is held back and
super-resolved under each blur with the right and the wrong caption. See docs/demo.md.
"""

import argparse
import os
import shutil
import sys
import time
from dataclasses import replace

import cv2
import numpy as np

from pdnsr.data.image_files import write_image
from pdnsr.errors import UserError, run_main
from pdnsr.options import write_options
from pdnsr.prompts.encoder import RANDOM_TAGS
from pdnsr.tools.cli import add_clip_arguments, check_output_folder
from pdnsr.tools.experiments import prompt_information as pi
from pdnsr.tools.experiments.captioned_degradations import get_degradations
from pdnsr.tools.experiments.runs import progress_of, train_all
from pdnsr.tools.sample_data import bicubic_resize, sample_photos
from pdnsr.utils.files import write_text
from pdnsr.utils.markdown import markdown_table
from pdnsr.utils.visualization import labelled_grid, overlay_heatmap, with_colour_bar

HOLDOUT = 'chelsea'  # the cat: no other photo shows an animal, so nothing of it is seen in training
SCALE = 2
DEGRADATIONS = get_degradations('blur')  # sharp (sigma 0.4) and blurry (sigma 2.0), captions naming them
RECIPES = {'default': pi.DEMO, 'quick': pi.DEMO_QUICK}  # timed on a 2-core CPU (docs/demo.md)
LABELS = {'baseline': 'EDSR', 'plus': 'EDSR+'}
# The rows of the table and the panels of comparison.png: {key: label}.
METHODS = {'bicubic': 'bicubic', 'baseline': 'EDSR (no prompt)', 'right': 'EDSR+ right caption',
           'swapped': 'EDSR+ wrong caption'}  # fmt: skip
FILE_TAG = {'baseline': 'baseline', 'right': 'right', 'swapped': 'wrong'}  # in file names and picture labels
CROP, ZOOM = 128, 2  # comparison.png: a CROP px window shown ZOOM times larger


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
    add_clip_arguments(parser, pretrained='none')  # random weights: nothing to download, and enough here
    return parser


def banner(clip_model, clip_pretrained):
    """The lines printed first and repeated under the table: what the captions carry in this run."""
    kinds = '; '.join(f'"{d.caption}" = {d.describe()}' for d in DEGRADATIONS)
    lines = [
        f'WHAT THE CAPTIONS CARRY: each LR image was made with one of two blurs before bicubic x{SCALE}, and its',
        f'caption names the blur, not the content ({kinds}).',
        'EDSR+ reads the caption; EDSR sees only the image and has to guess how much to sharpen.',
    ]
    if clip_pretrained not in RANDOM_TAGS:
        return lines + [f'CLIP ({clip_model}) runs with pretrained weights {clip_pretrained!r}.']
    return lines + [
        f'CLIP ({clip_model}) runs with RANDOM weights (--clip-pretrained none, the default): each caption is a',
        'fixed vector that means nothing to CLIP, and training ties it to its blur. With real CLIP weights',
        '(--clip-pretrained), content captions ("a ginger cat") work through this same path: the paper\'s setting.',
    ]


def _summarise(line, total):
    """One short progress line from a basicsr training log line, or None for the other log lines."""
    p = progress_of(line)
    if p is None:
        return None
    text = f'iter {p["iter"]:>5d}/{total}' + (f'  l_pix {p["l_pix"]:.4f}' if 'l_pix' in p else '')
    text += f'  T {p["temperature"]:g}' if 'temperature' in p else ''
    eta = (p['eta'] or '-').strip()
    return text if eta.startswith('-') else f'{text}  eta {eta}'  # basicsr's eta at the end reads "-1 day, ..."


def worst_window(bicubic, hr, size):
    """(top, left) of the ``size`` x ``size`` window where bicubic errs most: where SR has the most to recover."""
    sat = np.pad(np.abs(bicubic.astype(np.float32) - hr).mean(axis=2).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = sat[size:, size:] - sat[:-size, size:] - sat[size:, :-size] + sat[:-size, :-size]
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(sums)), sums.shape))


def comparison_picture(images, scores, window):
    """``comparison.png``: a row per blur: bicubic, EDSR, EDSR+ with the right and the wrong caption, HR, cropped to
    ``window`` (top, left, size), ``ZOOM`` times larger; ``images[blur][method]`` uint8 BGR, ``scores`` likewise."""
    top, left, size = window

    def panel(deg, key, title):
        label = f'{deg}: {title}' + (f' {scores[deg][key][0]:.2f}' if key in scores[deg] else '')
        crop = images[deg][key][top : top + size, left : left + size]
        return label, cv2.resize(crop, None, fx=ZOOM, fy=ZOOM, interpolation=cv2.INTER_NEAREST)

    return labelled_grid([[panel(d.name, *m) for m in (*METHODS.items(), ('hr', 'HR'))] for d in DEGRADATIONS])


def attention_picture(images, diag, out):
    """``attention.png``: a row per blur, the masks of the first and the last DCM under the right and the wrong
    caption over the SR image, with the colour bar of the masks (0 to 1); each panel is also written on its own.
    Returns the picture and a line per blur and DCM comparing the two captions' masks (from ``diag``,
    :func:`pi.evaluate`'s, of the one held-out photo)."""
    rows, lines = [], []
    for deg in DEGRADATIONS:
        rows.append([])
        masks, stats = images[deg.name]['masks'], diag[deg.name]  # every DCM has a mask: index i is DCM i
        for i in (min(masks['right']), max(masks['right'])):
            for which in ('right', 'swapped'):
                overlay = overlay_heatmap(images[deg.name][which], masks[which][i])
                path = os.path.join(out, f'attention_{deg.name}_dcm{i}_{FILE_TAG[which]}.png')
                write_image(path, with_colour_bar(overlay))
                rows[-1].append((f'{deg.name} input, DCM {i}, {FILE_TAG[which]} caption', overlay))
            a, b = (stats['mask'][which][i] for which in ('right', 'swapped'))
            lines.append(
                f'      {deg.name} input, DCM {i}: mean mask {a:.3f} (right) / {b:.3f} (wrong), '
                f'mean |difference| {stats["right_vs_swapped"][i]:.3f}'
            )
    return with_colour_bar(labelled_grid(rows)), lines


def results_table(scores, caption):
    """The result table: one row per method, PSNR / SSIM per blur, then the caption as a paragraph."""
    head = [h for d in DEGRADATIONS for h in (f'{d.name} (σ {d.sigma:g}) PSNR', 'SSIM')]
    # PSNR with 2 decimals, SSIM with 4
    rows = [[title, *(f'{v:.{n}f}' for d in DEGRADATIONS for v, n in zip(scores[d.name][key], (2, 4)))]
            for key, title in METHODS.items()]  # fmt: skip
    return markdown_table(['method', *head], rows, right=range(1, len(head) + 1)) + '\n\n' + caption


def run(args):
    """The demo once arguments are parsed; returns the exit status. Raises UserError for user errors."""
    t_start = time.time()
    recipe = RECIPES['quick' if args.quick else 'default']
    recipe = replace(recipe, iters=args.iters) if args.iters is not None else recipe
    if recipe.iters < 1:
        raise UserError(f'--iters must be a positive number of iterations, got {recipe.iters}')
    check_output_folder(args.output)
    out = os.path.abspath(args.output)
    notice = banner(args.clip_model, args.clip_pretrained)
    print('\n'.join(notice))
    os.makedirs(out, exist_ok=True)  # runs start fresh; anything else in the output folder is left alone
    for sub in ('data', 'options', 'experiments/demo_baseline', 'experiments/demo_plus'):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)

    print(
        f'[1/5] blurring training tiles and encoding their captions with CLIP {args.clip_model} '
        f'(pretrained={args.clip_pretrained})'
    )
    photos = {name: np.ascontiguousarray(rgb[..., ::-1]) for name, rgb in sample_photos().items()}
    test = {HOLDOUT: {HOLDOUT: photos.pop(HOLDOUT)}}
    data = pi.prepare(recipe, photos, test, os.path.join(out, 'data'), args.clip_model, args.clip_pretrained, args.seed)
    assignment = data['train']['assignment']
    counts = ', '.join(f'{sum(v is d for v in assignment.values())} {d.name}' for d in DEGRADATIONS)
    print(
        f'    {len(assignment)} training tiles of {recipe.tile} px ({counts}) from {len(photos)} photos '
        f'({", ".join(sorted(photos))}); held out: {HOLDOUT}; prompt store {data["train"]["prompts"]}'
    )

    print(f'[2/5] training EDSR and EDSR+ ({recipe.iters} iterations each, both at once)')
    os.makedirs(os.path.join(out, 'options'), exist_ok=True)
    run_opts = {kind: pi.run_options(recipe, kind, args.seed, data['train'], data['prompt_dim']) for kind in LABELS}
    paths = {k: write_options(o, os.path.join(out, 'options', f'train_demo_{k}.yml')) for k, o in run_opts.items()}
    names, t_train = {o['name']: LABELS[k] for k, o in run_opts.items()}, time.time()

    def show(name, line):  # one write per line: the two runs report from two threads
        summary = _summarise(line, recipe.iters)
        if summary:
            sys.stdout.write(f'    {names[name]:<5}  {summary}\n')

    def done(name, seconds):
        sys.stdout.write(f'    {names[name]:<5}  done in {seconds:.0f} s\n')

    weights = train_all(list(run_opts.values()), out, jobs=2, on_line=show, on_done=done)
    t_train = time.time() - t_train

    print(f'[3/5] super-resolving the held-out photo {HOLDOUT!r} x{SCALE} under each blur')
    images, scores = {d.name: {} for d in DEGRADATIONS}, {d.name: {} for d in DEGRADATIONS}
    for kind, opt in run_opts.items():  # EDSR+ last: its attention masks are the ones kept
        res = pi.evaluate(paths[kind], weights[opt['name']], data['tests'], SCALE, kind == 'plus', keep_images=True)
        for deg, imgs in images.items():
            imgs.update(res['images'][HOLDOUT][deg])
            scores[deg].update({mode: v[0] for mode, v in res['scores'][HOLDOUT][deg].items()})
    for deg, imgs in images.items():
        imgs['bicubic'] = bicubic_resize(imgs['lr'], SCALE)
        scores[deg]['bicubic'] = pi.score(imgs['bicubic'], imgs['hr'], SCALE)
        for key, tag in FILE_TAG.items():
            write_image(os.path.join(out, f'{HOLDOUT}_{deg}_x{SCALE}_{tag}.png'), imgs[key])

    print('[4/5] writing comparison.png and attention.png')
    hr, bicubic = images[DEGRADATIONS[-1].name]['hr'], images[DEGRADATIONS[-1].name]['bicubic']
    size = min(CROP, *hr.shape[:2])
    top, left = worst_window(bicubic, hr, size)  # one window for every row
    write_image(os.path.join(out, 'comparison.png'), comparison_picture(images, scores, (top, left, size)))
    attention, lines = attention_picture(images, res['diag'], out)
    write_image(os.path.join(out, 'attention.png'), attention)
    print(f'    comparison crop at (top {top}, left {left}), {size} px; attention masks, right / wrong caption:')
    print('\n'.join(lines))

    print('[5/5] results')
    captions = '; '.join(pi.caption_lines(DEGRADATIONS))
    caption = (
        f'x{SCALE} SR of the held-out photo `{HOLDOUT}` ({hr.shape[1]}x{hr.shape[0]}) under each blur, PSNR (dB) / '
        f'SSIM on the Y channel with {SCALE} border pixels cropped, after {recipe.iters} iterations on '
        f'{len(assignment)} tiles of {len(photos)} photos ({recipe.num_block} blocks, {recipe.num_feat} features, '
        f'seed {args.seed}). {captions}.\n\n' + ' '.join(notice)
    )
    table = results_table(scores, caption)
    print(table)
    write_text(os.path.join(out, 'results.md'), table + '\n')
    print(
        f'\nOutputs in {args.output}/: comparison.png, attention.png (+ one file per blur, DCM and caption), '
        f'results.md, SR images, option files, experiments/. Training {t_train:.0f} s, total '
        f'{time.time() - t_start:.0f} s.'
    )
    weights = os.path.join(args.output, 'experiments', 'demo_plus', 'models', 'net_g_latest.pth')
    print(f'See EDSR+ at work on your own photo in a browser: pdnsr-app --weights {weights} (docs/app.md)')
    return 0


def main(argv=None, prog=None):
    """Entry point of ``scripts/demo.py`` / ``pdnsr-demo``; returns the exit status.

    0: done; 1: a training run failed (its log's tail is printed); 2: a user error, one line on stderr.
    """
    prog = prog or 'pdnsr-demo'
    return run_main(lambda: run(build_parser(prog).parse_args(argv)), prog)
