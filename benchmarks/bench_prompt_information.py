"""Prompts that carry information: EDSR+ with the right, the swapped and a zero caption against EDSR.

Each LR image is made with one of K known degradations (by default a Gaussian blur of sigma 0.4 or 2.0 before
MATLAB bicubic x2; ``--degradations blur-noise`` adds an LR noise axis), and its caption names the degradation
("a sharp photo" / "a blurry photo"). The caption therefore carries information that the LR image hides, so a
network that reads its prompt can do better than one that does not -- and worse when it is told the wrong thing.
CLIP runs with RANDOM weights (``pretrained=None``; no weights can be downloaded here): distinct captions still
give distinct embeddings, which is all this experiment needs. The captions name the degradation, not the content.

Pipeline (the project's real pieces):
1. Training pairs: BSD68 + SunHays80 cut into ``--crop`` HR sub-images ``<key>_s001``...; each sub-image gets
   its own degradation (balanced, seeded: ``pdnsr.data.captioned_degradations``) and LR by
   ``pdnsr.data.degradations.blur_downsample``. Test pairs: every Set5 / Set14 image under every degradation.
2. Captions -> ``PromptEncoder`` -> ``build_prompt_store(kind='text')``: one store for training, and for each
   test folder a store of the right captions and one of the swapped captions.
3. Training: ``python pdnsr/train.py -opt <generated yml>`` subprocesses (``--jobs`` at once, one thread each),
   ``PDNModel``, option dicts from ``pdnsr.options``; the baseline and its "+" twin share one recipe and one seed
   per run, so they see the same patches. The training set is read by ``PromptPairedImageDataset``.
4. Evaluation through ``PromptPairedImageDataset`` (right / swapped stores) and ``pdnsr.inference.super_resolve``:
   EDSR+ with the right caption, the swapped caption and a zero prompt, and EDSR; basicsr's PSNR / SSIM on Y with
   ``crop_border = scale``; per degradation and overall; mean ± std over seeds and every seed's figures. The
   learned router weights pi and attention masks are printed too (the diagnostics the issue asks for).

    .venv/bin/python benchmarks/bench_prompt_information.py [--seeds 0 1 2] [--iters 1500] [--dcm-bank compact]

Trained checkpoints and prepared data are reused from ``--workdir`` when the recipe is identical (the run name
holds a hash of its option dict), so ``--dcm-bank compact`` after a paper run only trains the "+" networks again.
"""

import hashlib
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from common import REPO_ROOT, images_in, make_parser, print_header, print_table, setup, train_run

# isort: split
import cv2
import torch
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils import tensor2img

from pdnsr import options as opts
from pdnsr.cli import add_clip_arguments
from pdnsr.data.captioned_degradations import (
    assign_degradations,
    captions_of,
    get_degradations,
    swapped,
    write_degraded_pair,
)

SHARED = REPO_ROOT.parent / 'shared' / 'data'
TRAIN_SETS = ('BSD68', 'SunHays80')
TEST_SETS = ('Set5', 'Set14')
DATA_SEED = 0  # the degradation of each image is part of the data: the same for every training seed


def _edsr_args(args):
    return dict(num_feat=args.num_feat, num_block=args.num_block)


def _rrdbnet_args(args):
    return dict(num_feat=args.num_feat, num_block=args.num_block, num_grow_ch=args.num_feat // 2)  # ESRGAN's 64 / 32


# --network NAME -> (baseline type, "+" type, the types' own network_g arguments from the command line). One line
# per pair: a new pair only needs its two registered type names and the arguments both take.
NETWORK_PAIRS = {
    'EDSR': ('EDSR', 'EDSRPlus', _edsr_args),
    'RRDBNet': ('RRDBNet', 'RRDBNetPlus', _rrdbnet_args),
}
# basicsr's RRDBNet pixel-unshuffles by 2 at x2: odd LR sizes are reflection-padded and the output cropped, the way
# RRDBNetPlus does it inside its forward.
INPUT_MULTIPLE = {'RRDBNet': 2}

# Evaluation conditions of the "+" network: which prompt it gets.
PLUS_MODES = ('right', 'swapped', 'zero')


# ---------------------------------------------------------------------------------------------------------------------
# data


def subimages(img, crop):
    """Non-overlapping ``crop`` x ``crop`` tiles of ``img`` in row order (the whole image if it is smaller)."""
    if img.shape[0] < crop or img.shape[1] < crop:
        return [img]
    return [
        img[top : top + crop, left : left + crop]
        for top in range(0, img.shape[0] - crop + 1, crop)
        for left in range(0, img.shape[1] - crop + 1, crop)
    ]


def prepare_train(args, sources, out_dir, degradations):
    """Training sub-image pairs with one degradation per sub-image key; returns (hr_dir, lr_dir, assignment)."""
    hr_dir, lr_dir = os.path.join(out_dir, 'HR_sub'), os.path.join(out_dir, 'LR_sub')
    done = os.path.join(out_dir, 'done.json')
    tiles = {}
    for prefix, folder in sources.items():
        for path in images_in(folder)[: args.limit]:
            name = f'{prefix}_{os.path.splitext(os.path.basename(path))[0]}'
            for index, tile in enumerate(subimages(cv2.imread(path, cv2.IMREAD_COLOR), args.crop), 1):
                tiles[f'{name}_s{index:03d}'] = tile
    assignment = assign_degradations(tiles, degradations, seed=DATA_SEED)
    if not os.path.exists(done):
        os.makedirs(hr_dir, exist_ok=True)
        os.makedirs(lr_dir, exist_ok=True)
        for key, tile in tiles.items():
            write_degraded_pair(tile, assignment[key], args.scale, key, hr_dir, lr_dir)
        _write_json(done, {'keys': len(tiles)})
    return hr_dir, lr_dir, assignment


def prepare_test(args, folder, out_dir, degradation):
    """Every image of ``folder`` under ``degradation``; returns (hr_dir, lr_dir, assignment)."""
    hr_dir, lr_dir = os.path.join(out_dir, 'HR'), os.path.join(out_dir, 'LR')
    paths = images_in(folder)[: args.limit]
    assignment = {os.path.splitext(os.path.basename(p))[0]: degradation for p in paths}
    if not os.path.exists(os.path.join(out_dir, 'done.json')):
        os.makedirs(hr_dir, exist_ok=True)
        os.makedirs(lr_dir, exist_ok=True)
        for path, key in zip(paths, assignment):
            write_degraded_pair(cv2.imread(path, cv2.IMREAD_COLOR), degradation, args.scale, key, hr_dir, lr_dir)
        _write_json(os.path.join(out_dir, 'done.json'), {'keys': len(paths)})
    return hr_dir, lr_dir, assignment


def build_store(encoder, path, captions):
    from pdnsr.prompts.build import build_prompt_store

    if not os.path.exists(path):
        build_prompt_store('text', path, encoder, captions=captions, progress=False)
    return path


def _write_json(path, data):
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------------
# training
def temperature_every(args, n_train):
    """Epochs per temperature step: the paper's 11 steps (34 -> 1 by 3) squeezed into the first 2/3 of the run."""
    if args.temperature_every is not None:
        return args.temperature_every
    epochs = args.iters / max(1, n_train // args.batch)
    return max(1, int(epochs * 2 / 3 / 11))


def run_options(args, net_type, seed, data):
    """The option dict of one training run; its name carries a hash of the recipe (for reuse in --workdir)."""
    baseline, plus, net_args = NETWORK_PAIRS[args.network]
    prompted = net_type == plus
    dcm = {'bank': args.dcm_bank, **args.dcm} if prompted else None
    network_g = opts.network(net_type, args.scale, prompt_dim=data['prompt_dim'], dcm=dcm, **net_args(args))
    train_set = opts.train_dataset(
        'train', data['hr'], data['lr'], args.gt_size, args.batch, prompts=data['prompts'], prompted=prompted
    )
    opt = opts.train_options(
        'run',
        network_g,
        train_set,
        args.scale,
        args.iters,
        args.lr,
        seed=seed,
        warmup_iter=args.warmup,
        betas=(0.9, 0.99),
        eta_min=1e-7,
        temperature=dict(init=34, step=3, every_epochs=data['temperature_every'], min=1),
        print_freq=max(1, args.iters // 5),
    )
    digest = hashlib.sha1(json.dumps(opt, sort_keys=True).encode()).hexdigest()[:8]
    opt['name'] = f'info_{net_type}_seed{seed}_{digest}'
    return opt


def train(args, opt, workdir):
    """Train one run with ``pdnsr/train.py`` (skipped when its final checkpoint exists); returns (weights, seconds)."""
    t0 = time.time()
    # basicsr keeps an already existing experiment folder by renaming it; a finished run has exactly this file.
    return train_run(opt, workdir, threads=1, reuse=True), time.time() - t0


# ---------------------------------------------------------------------------------------------------------------------
# evaluation
def load_net(net_opt, weights):
    from basicsr.archs import build_network

    from pdnsr.inference import load_weights

    net = build_network(dict(net_opt))
    load_weights(net, weights)
    return net.eval()


def test_loader(hr, lr, store, scale):
    """PromptPairedImageDataset over one test folder (validation form: the first stored prompt of each image)."""
    from pdnsr.data.prompt_paired_image_dataset import PromptPairedImageDataset

    return PromptPairedImageDataset(dict(opts.dataset('test', hr, lr, store, prompted=True), phase='val', scale=scale))


def evaluate(args, net_opt, weights, tests, prompted):
    """Per-image scores and diagnostics of one trained network.

    Returns:
        dict: ``scores[set][degradation][mode] = [(psnr, ssim), ...]`` per image, with modes PLUS_MODES for the
        "+" network and ('baseline',) otherwise; ``diag`` (prompted only): per degradation and DCM the router
        weights pi under the right caption, and per mode the mean mask, its saturated share and the mean
        |mask(right) - mask(swapped)|.
    """
    from pdnsr.archs.dcm_arch import dcm_modules
    from pdnsr.inference import super_resolve

    net = load_net(net_opt, weights)
    dcms = dcm_modules(net)
    scores, diag = {}, {}
    for (set_name, deg_name), test in tests.items():
        right = test_loader(test['hr'], test['lr'], test['right'], args.scale)
        wrong = test_loader(test['hr'], test['lr'], test['swapped'], args.scale)
        cell = scores.setdefault(set_name, {}).setdefault(deg_name, {})
        sums = diag.setdefault(deg_name, {'mask': {}, 'sat': {}, 'diff': [], 'pi': None, 'n': 0})
        for i in range(len(right)):
            item, item_wrong = right[i], wrong[i]
            lq = item['lq'][None]
            h, w = lq.shape[-2:]
            multiple = INPUT_MULTIPLE.get(net_opt['type'], 1)
            lq = torch.nn.functional.pad(lq, (0, -w % multiple, 0, -h % multiple), mode='reflect')
            gt = tensor2img(item['gt'])
            modes = {'baseline': None}
            if prompted:
                modes = {'right': item['prompt'][None], 'swapped': item_wrong['prompt'][None], 'zero': None}
            masks = {}
            for mode, prompt in modes.items():
                if prompted:
                    sr, masks[mode] = super_resolve(net, lq, prompt, keep_attention=True, scale=args.scale)
                else:
                    sr = super_resolve(net, lq, scale=args.scale)
                out = tensor2img(sr[..., : h * args.scale, : w * args.scale])
                cell.setdefault(mode, []).append(
                    (
                        calculate_psnr(out, gt, crop_border=args.scale, test_y_channel=True),
                        calculate_ssim(out, gt, crop_border=args.scale, test_y_channel=True),
                    )
                )
            if prompted:
                sums['n'] += 1
                if sums['pi'] is None:
                    with torch.no_grad():
                        sums['pi'] = [dcm.kernel_weights(item['prompt'][None])[0].tolist() for dcm in dcms]
                for mode, per_dcm in masks.items():
                    if not per_dcm:
                        continue
                    m = torch.stack([per_dcm[j].mean() for j in sorted(per_dcm)])
                    s = torch.stack(
                        [((per_dcm[j] < 0.02) | (per_dcm[j] > 0.98)).float().mean() for j in sorted(per_dcm)]
                    )
                    sums['mask'][mode] = sums['mask'].get(mode, 0) + m
                    sums['sat'][mode] = sums['sat'].get(mode, 0) + s
                if masks and masks['right']:
                    d = torch.stack(
                        [(masks['right'][j] - masks['swapped'][j]).abs().mean() for j in sorted(masks['right'])]
                    )
                    sums['diff'].append(d)
    if not prompted:
        return {'scores': scores}
    out_diag = {}
    for deg_name, sums in diag.items():
        n = max(1, sums['n'])
        out_diag[deg_name] = dict(
            pi=sums['pi'],
            mask={mode: (v / n).tolist() for mode, v in sums['mask'].items()},
            saturated={mode: (v / n).tolist() for mode, v in sums['sat'].items()},
            right_vs_swapped=torch.stack(sums['diff']).mean(0).tolist() if sums['diff'] else [],
        )
    temps = sorted({float(dcm.temperature) for dcm in dcms})
    zetas = [float(dcm.zeta.detach()) for dcm in dcms if hasattr(dcm, 'zeta')]
    return {'scores': scores, 'diag': out_diag, 'temperature': temps, 'zeta': zetas}


# ---------------------------------------------------------------------------------------------------------------------
# tables
def mean_std(values, digits):
    if len(values) == 1:
        return f'{values[0]:.{digits}f}'
    return f'{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}'


def seed_means(results, args, set_name, degs, key, metric):
    """Per seed: mean over images (of the degradations ``degs``) of ``metric`` (0 PSNR, 1 SSIM) in condition key."""
    net, mode = key
    out = []
    for seed in args.seeds:
        cells = results[net, seed]['scores'][set_name]
        values = [v[metric] for d in degs for v in cells[d][mode]]
        out.append(statistics.mean(values))
    return out


def summary_rows(results, args, degradations, baseline, plus, metric, digits):
    rows, verdicts = [], []
    keys = [(baseline, 'baseline')] + [(plus, m) for m in PLUS_MODES]
    for set_name in args.sets:
        groups = [(d.name, [d.name]) for d in degradations] + [('all', [d.name for d in degradations])]
        for label, degs in groups:
            per = {k: seed_means(results, args, set_name, degs, k, metric) for k in keys}
            right = per[plus, 'right']
            d_base = [r - b for r, b in zip(right, per[baseline, 'baseline'])]
            d_swap = [r - s for r, s in zip(right, per[plus, 'swapped'])]
            rows.append(
                [set_name, label]
                + [mean_std(per[k], digits) for k in keys]
                + [
                    mean_std(d_base, digits),
                    f'{sum(d > 0 for d in d_base)}/{len(d_base)}',
                    mean_std(d_swap, digits),
                    f'{sum(d > 0 for d in d_swap)}/{len(d_swap)}',
                ]
            )
            if label == 'all' and metric == 0:
                verdicts.append((set_name, d_base, d_swap))
    return rows, verdicts


def verdict_line(set_name, d_base, d_swap, quick):
    if quick:
        return f'{set_name}: n/a (--quick is a smoke run)'

    def one(diffs, target):
        mean = statistics.mean(diffs)
        same_sign = all(d > 0 for d in diffs) or all(d < 0 for d in diffs)
        ok = mean >= target and all(d > 0 for d in diffs)
        return f'{mean:+.2f} dB (target ≥ +{target:g}, every seed same sign: {"yes" if same_sign else "no"}) ' + (
            'met' if ok else 'MISSED'
        )

    return f'{set_name}: right − EDSR {one(d_base, 1.0)}; right − swapped {one(d_swap, 3.0)}'


def caption_similarity(encoder, degradations):
    emb = encoder.encode_text([d.caption for d in degradations])
    return emb @ emb.T


# ---------------------------------------------------------------------------------------------------------------------
def parse_args():
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument('--network', choices=sorted(NETWORK_PAIRS), default='EDSR', help='baseline / "+" pair')
    parser.add_argument(
        '--dcm-bank',
        choices=('paper', 'compact'),
        default='paper',
        help="network_g.dcm.bank of the '+' network (default paper)",
    )
    parser.add_argument('--dcm', nargs='*', default=[], metavar='KEY=VALUE', help='more network_g.dcm options')
    parser.add_argument('--degradations', default='blur', help='degradation set: blur (K=2) or blur-noise (K=4)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--iters', type=int, default=1500)
    parser.add_argument('--scale', type=int, default=2, choices=(2,))
    parser.add_argument('--num-block', type=int, default=4)
    parser.add_argument('--num-feat', type=int, default=32)
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--gt-size', type=int, default=48, help='HR training patch size (default 48)')
    parser.add_argument('--lr', type=float, default=2e-4, help='Adam learning rate, cosine decay (default 2e-4)')
    parser.add_argument('--warmup', type=int, default=-1, help='linear warm-up iterations (default -1: none)')
    parser.add_argument(
        '--temperature-every',
        type=int,
        default=None,
        help='epochs per DCM temperature step (34 -> 1 by 3); default: the 11 steps fit the first 2/3 of the run',
    )
    parser.add_argument('--crop', type=int, default=192, help='HR training sub-image size (default 192)')
    parser.add_argument('--jobs', type=int, default=2, help='training runs at once, one thread each (default 2)')
    # RANDOM weights by default: the only option without a download, and enough for captions that name the blur.
    add_clip_arguments(parser, pretrained='none')
    parser.add_argument('--train-data', default=str(SHARED / 'train'))
    parser.add_argument('--bench-data', default=str(SHARED / 'benchmarks'))
    parser.add_argument(
        '--workdir', default=None, help='data, stores, runs (default a new folder under /tmp); reused when it exists'
    )
    args = parser.parse_args()
    import yaml

    args.dcm = {k: yaml.safe_load(v) for k, v in (item.split('=', 1) for item in args.dcm)}
    args.limit = None
    args.sets = list(TEST_SETS)
    if args.quick:
        args.iters, args.seeds, args.num_block, args.num_feat, args.batch, args.gt_size = 4, [0], 1, 8, 2, 32
        args.limit, args.crop = 2, 96
    if args.iters < 1 or args.batch < 1 or args.jobs < 1:
        parser.error('--iters, --batch and --jobs must be positive')
    return args


def main():
    t_start = time.time()
    args = parse_args()
    from pdnsr.archs.plus_util import DCM_OPTIONS

    if 'bank' not in DCM_OPTIONS:
        raise SystemExit('--dcm-bank: this checkout has no DCM option "bank" (pdnsr.archs.plus_util.DCM_OPTIONS)')
    degradations = get_degradations(args.degradations)
    device = setup(args)
    if device.type != 'cpu':
        raise SystemExit('bench_prompt_information.py trains on the CPU through pdnsr/train.py; use --device cpu')
    baseline, plus, _ = NETWORK_PAIRS[args.network]
    print_header(
        device,
        f'Prompts that carry information: {baseline} vs {plus} (dcm bank {args.dcm_bank}), x{args.scale}, '
        f'{args.num_block} blocks, {args.num_feat} feat, {args.iters} iterations, batch {args.batch}, '
        f'{len(degradations)} degradations, seeds {args.seeds}',
    )
    train_sets = {name: os.path.join(args.train_data, name) for name in TRAIN_SETS}
    test_sets = {name: os.path.join(args.bench_data, name) for name in args.sets}
    missing = [p for p in (*train_sets.values(), *test_sets.values()) if not os.path.isdir(p)]
    if missing:
        print(f'SKIPPED: data not found: {missing} (--train-data / --bench-data)')
        return

    from pdnsr.prompts.encoder import RANDOM_TAGS, PromptEncoder

    random_clip = args.clip_pretrained in RANDOM_TAGS
    encoder = PromptEncoder(args.clip_model, pretrained=None if random_clip else args.clip_pretrained, seed=0)
    clip_tag = 'random' if random_clip else os.path.basename(args.clip_pretrained)
    print(
        f'Prompts: captions naming the degradation, encoded by open_clip {args.clip_model} with '
        + (
            'RANDOM weights (pretrained=None: no weights can be downloaded here). Distinct captions still give '
            'distinct embeddings; the captions carry the degradation, not the content.'
            if random_clip
            else f'weights {args.clip_pretrained!r}.'
        )
    )
    sim = caption_similarity(encoder, degradations)
    for i, d in enumerate(degradations):
        cos = ', '.join(f'{sim[i, j]:.3f}' for j in range(len(degradations)))
        print(f'  {d.name}: {d.describe()}; caption "{d.caption}"; wrong caption "{swapped(degradations, d).caption}"')
        print(f'    cosine with each caption: {cos}')

    workdir = os.path.abspath(args.workdir or os.path.join('/tmp', f'pdnsr_prompt_info_{os.getpid()}'))
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    tag = f'{args.degradations}_x{args.scale}_c{args.crop}' + ('_quick' if args.quick else '')
    train_dir = os.path.join(workdir, f'train_{tag}')
    hr, lr, assignment = prepare_train(args, train_sets, train_dir, degradations)
    data = dict(
        hr=hr,
        lr=lr,
        prompt_dim=encoder.embed_dim,
        prompts=build_store(encoder, os.path.join(train_dir, f'prompts_{clip_tag}.lmdb'), captions_of(assignment)),
    )
    data['temperature_every'] = temperature_every(args, len(assignment))
    tests = {}
    for set_name, folder in test_sets.items():
        for deg in degradations:
            tdir = os.path.join(workdir, f'{set_name}_{deg.name}_{tag}')
            thr, tlr, tassign = prepare_test(args, folder, tdir, deg)
            tests[set_name, deg.name] = dict(
                hr=thr,
                lr=tlr,
                right=build_store(encoder, os.path.join(tdir, f'right_{clip_tag}.lmdb'), captions_of(tassign)),
                swapped=build_store(
                    encoder, os.path.join(tdir, f'swapped_{clip_tag}.lmdb'), captions_of(tassign, degradations)
                ),
            )
    del encoder
    counts = {d.name: sum(v is d for v in assignment.values()) for d in degradations}
    print(
        f'\ndata: {len(assignment)} training sub-images of {args.crop} px from {"+".join(TRAIN_SETS)} '
        f'({", ".join(f"{k} {v}" for k, v in counts.items())}); test: every image of {", ".join(args.sets)} under '
        f'every degradation; temperature 34 -> 1, -3 every {data["temperature_every"]} epoch(s) '
        f'({max(1, len(assignment) // args.batch)} iterations each); prepared in {time.time() - t0:.0f} s; '
        f'workdir {workdir}\n',
        flush=True,
    )

    runs = [(net_type, seed) for net_type in (plus, baseline) for seed in args.seeds]  # longest first
    run_opts = {run: run_options(args, run[0], run[1], data) for run in runs}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {run: pool.submit(train, args, run_opts[run], workdir) for run in runs}
        trained = {}
        for run in runs:
            weights, seconds = futures[run].result()
            trained[run] = weights
            print(
                f'  {run[0]} seed {run[1]}: ' + (f'trained in {seconds:.0f} s' if seconds else 'reused from workdir'),
                flush=True,
            )
    results = {}
    for run in runs:
        t1 = time.time()
        # Evaluations are kept beside the runs: a later call (e.g. --dcm-bank compact) reuses the baseline's.
        cache = os.path.join(workdir, f'eval_{run_opts[run]["name"]}_{tag}.json')
        if os.path.exists(cache):
            with open(cache, encoding='utf-8') as f:
                results[run] = json.load(f)
            print(f'  {run[0]} seed {run[1]}: evaluation reused from workdir', flush=True)
            continue
        results[run] = evaluate(args, run_opts[run]['network_g'], trained[run], tests, run[0] == plus)
        _write_json(cache, results[run])
        print(f'  evaluated {run[0]} seed {run[1]} in {time.time() - t1:.0f} s', flush=True)
    _write_json(
        os.path.join(workdir, f'results_{args.network}_{args.dcm_bank}_{tag}_it{args.iters}.json'),
        {f'{net}|{seed}': value for (net, seed), value in results.items()},
    )
    print()

    labels = [baseline, f'{plus} right', f'{plus} swapped', f'{plus} zero prompt']
    diff_headers = ['right − baseline', 'seeds > 0', 'right − swapped', 'seeds > 0']
    print(
        f'PSNR (dB) on Y, crop_border {args.scale}, final weights (no EMA); mean ± std over seeds {args.seeds}; '
        f'per degradation ({", ".join(d.name for d in degradations)}) and all ("all" = every test image under '
        'every degradation)\n'
    )
    rows, verdicts = summary_rows(results, args, degradations, baseline, plus, 0, 2)
    print_table(['set', 'degradation', *labels, *diff_headers], rows)
    print('SSIM (Y), same layout\n')
    rows, _ = summary_rows(results, args, degradations, baseline, plus, 1, 4)
    print_table(['set', 'degradation', *labels, *diff_headers], rows)

    print('Per seed, PSNR (dB) over all test images\n')
    seed_rows = []
    for set_name in args.sets:
        degs = [d.name for d in degradations]
        for i, seed in enumerate(args.seeds):
            vals = [
                seed_means(results, args, set_name, degs, k, 0)[i]
                for k in [(baseline, 'baseline')] + [(plus, m) for m in PLUS_MODES]
            ]
            seed_rows.append(
                [set_name, seed, *(f'{v:.2f}' for v in vals), f'{vals[1] - vals[0]:+.2f}', f'{vals[1] - vals[2]:+.2f}']
            )
    print_table(['set', 'seed', *labels, 'right − baseline', 'right − swapped'], seed_rows)

    print('Diagnostics of the trained "+" networks (seed by seed): router weights pi under each right caption, per DCM')
    print('(first to last); mean attention mask per prompt and its share saturated (< 0.02 or > 0.98)\n')
    diag_rows = []
    for seed in args.seeds:
        res = results[plus, seed]
        for deg in degradations:
            dg = res['diag'][deg.name]
            pis = ' / '.join('[' + ' '.join(f'{v:.2f}' for v in pi) + ']' for pi in dg['pi'])
            masks = ', '.join(
                f'{mode} {statistics.mean(dg["mask"][mode]):.3f} ({statistics.mean(dg["saturated"][mode]):.0%})'
                for mode in PLUS_MODES
                if mode in dg['mask']
            )
            diff = statistics.mean(dg['right_vs_swapped']) if dg['right_vs_swapped'] else float('nan')
            diag_rows.append([seed, deg.name, pis, masks, f'{diff:.3f}'])
    print_table(
        [
            'seed',
            'test degradation',
            'pi per DCM (right caption)',
            'mean mask (saturated)',
            'mean abs(M right − M swapped)',
        ],
        diag_rows,
    )
    zetas = {seed: results[plus, seed]['zeta'] for seed in args.seeds}
    temps = {seed: results[plus, seed]['temperature'] for seed in args.seeds}
    print(
        f'final temperature per seed: {temps}; zeta per DCM: '
        + '; '.join(f'seed {s}: ' + ' '.join(f'{z:.1f}' for z in zs) for s, zs in zetas.items())
        + '\n'
    )

    print('Targets (mean over seeds of the paired difference over all test images; every seed must be positive):')
    for set_name, d_base, d_swap in verdicts:
        print(f'  {verdict_line(set_name, d_base, d_swap, args.quick)}')
    print(f'\ntotal time {time.time() - t_start:.0f} s.')


if __name__ == '__main__':
    main()
