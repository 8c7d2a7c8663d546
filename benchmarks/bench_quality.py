"""Quality: a small EDSR and its EDSR+ twin trained with one recipe and one seed set, evaluated on Set5 / Set14.

THIS IS NOT THE PAPER'S EXPERIMENT: tiny networks (8 blocks, 32 features), a few hundred iterations on BSD68 +
SunHays80 on a CPU, and -- unless ``--clip-pretrained`` names real CLIP weights -- prompts from a RANDOM-weight
CLIP, which carry no meaning. It checks that the whole stack trains and evaluates a baseline and its "+" twin the
same way, and reports whatever difference comes out, including none or a loss.

Pipeline (the real stack):
1. HR images of ``--train-data`` (BSD68, SunHays80) are mod-cropped, degraded with
   ``pdnsr.data.degradations.blur_downsample`` (``--sigma 0`` = plain MATLAB bicubic, the default; 1.3 = the
   paper's blur) and cut into ``--crop`` HR sub-images ``<key>_s001`` ... (fast to decode; their prompt is the
   parent's, by the prompt store's sub-image rule).
2. Image prompts of the flipped full LR view: ``build_prompt_store(kind='image', view='flip')`` with
   ``PromptEncoder(pretrained=--clip-pretrained)``; the same for Set5 / Set14.
3. Training: ``python pdnsr/train.py -opt <generated yml>`` subprocesses (``--jobs`` at once),
   ``PDNSR_ROOT=<workdir>``, option dicts from ``pdnsr.options``: model ``PDNModel``, L1, Adam, cosine schedule,
   the paper's temperature schedule for the DCMs; ``--val-freq N`` validates (basicsr's validation) every N
   iterations and prints the curves. No EMA: after a few hundred iterations an EMA of decay 0.999 is still mostly
   the random initialisation (13 dB on Set5).
4. Evaluation: basicsr's ``calculate_psnr`` / ``calculate_ssim`` on Y, ``crop_border = scale``, per seed; the table
   gives mean ± std over seeds of each network and of the paired difference ("+" minus baseline, same seed).

    .venv/bin/python benchmarks/bench_quality.py [--iters 150] [--seeds 0 1 2] [--clip-pretrained none|TAG|FILE]
    .venv/bin/python benchmarks/bench_quality.py --iters 1000 --seeds 0 1 --val-freq 100 --jobs 2   # the long run
"""

import os
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import common
from common import SHARED_DATA, images_in, make_parser, make_workdir, mean_std, print_header, print_table, setup

# isort: split
import cv2
import numpy as np
import torch
from basicsr.data.transforms import mod_crop

from pdnsr import options as opts
from pdnsr import provenance
from pdnsr.data.degradations import blur_downsample
from pdnsr.data.image_files import read_bgr
from pdnsr.data.prompt_store import PromptStore
from pdnsr.inference import Upsampler
from pdnsr.options import write_options
from pdnsr.prompts.encoder import RANDOM_TAGS, PromptEncoder
from pdnsr.tools.experiments.prompt_information import score
from pdnsr.tools.experiments.runs import hashed_name, launch, validation_results, weights_path
from pdnsr.utils.files import fill_once


def prepare_pairs(sources, out_dir, scale, sigma, crop=None, limit=None):
    """Write HR/<key>.png and LR/<key>.png (full images) for every image of ``sources`` ({prefix: folder}).
    Returns (hr_dir, lr_dir)."""
    hr_dir, lr_dir = os.path.join(out_dir, 'HR'), os.path.join(out_dir, 'LR')
    os.makedirs(hr_dir, exist_ok=True)
    os.makedirs(lr_dir, exist_ok=True)
    for prefix, folder in sources.items():
        for path in images_in(folder)[:limit]:
            key = (prefix + '_' if prefix else '') + os.path.splitext(os.path.basename(path))[0]
            hr_path, lr_path = os.path.join(hr_dir, key + '.png'), os.path.join(lr_dir, key + '.png')
            img, _ = read_bgr(path)  # a truncated or unreadable file is refused, by name
            if crop is not None:
                img = img[:crop, :crop]
            img = mod_crop(img, scale)
            cv2.imwrite(lr_path, blur_downsample(img, scale, sigma=sigma or None))
            cv2.imwrite(hr_path, img)
    return hr_dir, lr_dir


def cut_subimages(hr_dir, lr_dir, out_dir, scale, crop, step):
    """HR sub-images of ``crop`` pixels every ``step`` (and the matching LR crops), named ``<key>_s001`` ..."""
    sub_hr, sub_lr = os.path.join(out_dir, 'HR_sub'), os.path.join(out_dir, 'LR_sub')
    os.makedirs(sub_hr, exist_ok=True)
    os.makedirs(sub_lr, exist_ok=True)
    for hr_path in images_in(hr_dir):
        key = os.path.splitext(os.path.basename(hr_path))[0]
        hr, lr = cv2.imread(hr_path), cv2.imread(os.path.join(lr_dir, key + '.png'))
        index = 0
        for top in range(0, hr.shape[0] - crop + 1, step):
            for left in range(0, hr.shape[1] - crop + 1, step):
                index += 1
                cv2.imwrite(os.path.join(sub_hr, f'{key}_s{index:03d}.png'), hr[top : top + crop, left : left + crop])
                lt, ll, lc = top // scale, left // scale, crop // scale
                cv2.imwrite(os.path.join(sub_lr, f'{key}_s{index:03d}.png'), lr[lt : lt + lc, ll : ll + lc])
    return sub_hr, sub_lr


def build_store(encoder, images_dir, out):
    from pdnsr.prompts.build import build_prompt_store

    if not os.path.exists(out):
        build_prompt_store('image', out, encoder, images_dir=images_dir, view='flip', progress=False)
    return out


def prepare_data(args, train_sets, bench_sets, workdir):
    """The training sub-images and the benchmark sets, degraded, with their image-prompt stores, in ``workdir``:
    each folder is named after a hash of every source folder and data option (another source or recipe never
    reuses it) and reused once finished.

    Returns:
        dict: ``hr``, ``lr``, ``prompts`` (training sub-images and their store), ``prompt_dim``, ``test`` {set: hr,
        lr, store, store_path}, ``bench`` (the ``--val-sets`` of ``test``), ``n_images``, ``n_sub``, ``clip_tag``.
    """
    limit, crop = (2, 96) if args.quick else (None, None)
    sub_crop, step = (min(args.crop, 96), 96) if args.quick else (args.crop, args.crop)
    key = dict(train=train_sets, bench=bench_sets, scale=args.scale, sigma=args.sigma, crop=crop, limit=limit,
               sub=(sub_crop, step))  # fmt: skip
    tag = hashed_name(f'x{args.scale}_s{args.sigma:g}_c{args.crop}', key)
    train_dir = os.path.join(workdir, f'train_{tag}')
    hr, lr, sub_hr, sub_lr = (os.path.join(train_dir, sub) for sub in ('HR', 'LR', 'HR_sub', 'LR_sub'))

    def make_train():
        prepare_pairs(train_sets, train_dir, args.scale, args.sigma, crop, limit)
        cut_subimages(hr, lr, train_dir, args.scale, sub_crop, step)

    fill_once(train_dir, make_train)
    random_clip = args.clip_pretrained in RANDOM_TAGS
    encoder = PromptEncoder('ViT-B-32', pretrained=None if random_clip else args.clip_pretrained)
    clip_tag = provenance.weights_tag(args.clip_pretrained)
    test = {}
    for name, folder in bench_sets.items():
        bdir = os.path.join(workdir, f'{name}_{tag}')
        fill_once(bdir, partial(prepare_pairs, {'': folder}, bdir, args.scale, args.sigma, crop, limit))
        store = build_store(encoder, os.path.join(bdir, 'LR'), os.path.join(bdir, f'prompts_{clip_tag}.lmdb'))
        test[name] = dict(hr=os.path.join(bdir, 'HR'), lr=os.path.join(bdir, 'LR'), store=PromptStore(store),
                          store_path=store)  # fmt: skip
    prompts = build_store(encoder, lr, os.path.join(train_dir, f'prompts_{clip_tag}.lmdb'))
    return dict(hr=sub_hr, lr=sub_lr, prompts=prompts, prompt_dim=encoder.embed_dim, test=test,
                bench={name: test[name] for name in args.val_sets}, n_images=len(os.listdir(hr)),
                n_sub=len(os.listdir(sub_hr)), clip_tag=clip_tag)  # fmt: skip


def bank_tag(args, net_type):
    """Run-name suffix of the DCM bank: none for the paper's (and for baselines, which have no DCMs)."""
    return f'_{args.dcm_bank}' if net_type.endswith('Plus') and args.dcm_bank != 'paper' else ''


def train_options(args, name, net_type, seed, data):
    """One run's option dict from :mod:`pdnsr.options`: the baseline and its "+" twin differ only in the network
    type, the dataset type (prompts or not) and the DCM temperature schedule (which a baseline does not have)."""
    prompted = net_type.endswith('Plus')
    network_g = opts.network(
        net_type,
        args.scale,
        prompt_dim=data['prompt_dim'],
        dcm=dict(bank=args.dcm_bank),
        num_feat=args.num_feat,
        num_block=args.num_block,
    )
    train_set = opts.train_dataset(
        'train', data['hr'], data['lr'], args.gt_size, args.batch, prompts=data['prompts'], prompted=prompted
    )
    val_sets = None
    if args.val_freq:
        val_sets = {
            f'val_{set_name}': opts.dataset(set_name, bench['hr'], bench['lr'], bench['store_path'], prompted)
            for set_name, bench in data['bench'].items()
        }
    return opts.train_options(
        name,
        network_g,
        train_set,
        args.scale,
        args.iters,
        args.lr,
        val_sets=val_sets,
        val_freq=args.val_freq,
        seed=seed,
        warmup_iter=args.warmup if args.warmup is not None else args.iters // 5,
        betas=(0.9, 0.99),
        eta_min=1e-6,
        temperature=dict(init=34, step=3, every_epochs=10, min=1),
        print_freq=max(1, args.iters // 4),
    )


def evaluate(args, opt, weights, bench, workdir):
    """{set: (mean PSNR, mean SSIM)} of run ``opt``'s final weights (``params``: no EMA) on each benchmark set, each
    image whole through :class:`pdnsr.inference.Upsampler` with its first prompt."""
    path = write_options(opt, os.path.join(workdir, f'{opt["name"]}_eval.yml'))
    up = Upsampler.from_checkpoint(weights, path, 'cpu', param_key='params', warn=lambda message: None)
    scores = {}
    for set_name, data in bench.items():
        results = []
        for hr_path in images_in(data['hr']):
            key = os.path.splitext(os.path.basename(hr_path))[0]
            lr = cv2.imread(os.path.join(data['lr'], key + '.png'))
            prompt = torch.from_numpy(data['store'].get(key)[0].copy()) if up.takes_prompt else None
            sr = up.enhance(lr[..., ::-1], prompt)
            results.append(score(np.ascontiguousarray(sr[..., ::-1]), cv2.imread(hr_path), args.scale))
        scores[set_name] = tuple(float(v) for v in np.mean(results, axis=0))
    return scores


def train(opt, workdir, threads):
    """The final weights of run ``opt``: trained with ``pdnsr/train.py``, or kept from an earlier identical run."""
    path = weights_path(workdir, opt['name'])
    if not os.path.exists(path):
        launch(opt, workdir, threads=threads).check(f'training {opt["name"]}')
    return path


def validation_curve(log_path, args):
    """[(iteration, set, PSNR)] from basicsr's validation log lines of one run (every ``--val-freq``)."""
    if not args.val_freq:
        return []
    curve, seen = [], {}
    with open(log_path, encoding='utf-8') as f:
        for set_name, psnr in validation_results(f.read()):
            seen[set_name] = seen.get(set_name, 0) + 1
            it = seen[set_name] * args.val_freq
            if it <= args.iters:  # basicsr validates once more after the last iteration: the same weights
                curve.append((it, set_name, psnr))
    return curve


def main():
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument(
        '--iters',
        type=int,
        default=150,
        help='training iterations per run (default 150: about '
        '1-2 s per iteration on 2 CPU cores, so the 6 trainings plus data preparation fit in about '
        '15 minutes on an idle machine; more iterations give more meaningful numbers)',
    )
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--scale', type=int, default=2)
    parser.add_argument('--num-block', type=int, default=8)
    parser.add_argument('--num-feat', type=int, default=32)
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--gt-size', type=int, default=64)
    parser.add_argument('--lr', type=float, default=5e-4)
    parser.add_argument(
        '--warmup',
        type=int,
        default=None,
        help='linear learning-rate warm-up iterations for both networks (default iters // 5; -1 = none). Without '
        'it the DCMs destabilise short high-lr runs (docs/demo.md)',
    )
    parser.add_argument(
        '--sigma', type=float, default=0.0, help='Gaussian blur before bicubic (0 = plain bicubic; the paper uses 1.3)'
    )
    parser.add_argument('--crop', type=int, default=128, help='HR sub-image size for training')
    parser.add_argument(
        '--clip-pretrained',
        default='none',
        help="open_clip weights: 'none' = RANDOM weights "
        "(meaningless prompts), an open_clip tag such as 'openai', or a local checkpoint file",
    )
    parser.add_argument(
        '--val-freq',
        type=int,
        default=0,
        help='validate every N iterations during training (basicsr validation, PSNR on Y) and print the curves; '
        '0 = no validation (default)',
    )
    parser.add_argument('--val-sets', nargs='+', default=['Set5'], help='sets validated during training')
    parser.add_argument(
        '--jobs', type=int, default=1, help='training runs at once (default 1 with --threads threads; >1: one each)'
    )
    parser.add_argument(
        '--dcm-bank', choices=('paper', 'compact'), default='paper', help="EDSR+'s network_g.dcm.bank (default paper)"
    )
    parser.add_argument('--train-data', default=str(SHARED_DATA / 'train'))
    parser.add_argument('--bench-data', default=str(SHARED_DATA / 'benchmarks'))
    parser.add_argument(
        '--workdir',
        default=None,
        help='where data, prompts and experiments go (default: a new folder under /tmp); finished data (named after '
        'its source folders and options) and runs (named after their whole option dict: the baseline of a '
        '--dcm-bank compact run, say) are reused',
    )
    args = parser.parse_args()
    if args.quick:
        args.iters, args.seeds, args.num_block, args.num_feat, args.batch, args.gt_size = 2, [0], 1, 8, 2, 32
        args.val_freq = 2
    device = setup(args)
    if device.type != 'cpu':
        raise SystemExit('bench_quality.py trains on the CPU through pdnsr/train.py (num_gpu: 0); use --device cpu')

    print_header(
        device,
        f'EDSR vs EDSR+ (dcm bank {args.dcm_bank}) trained with one recipe (x{args.scale}, {args.num_block} blocks, '
        f'{args.num_feat} feat, {args.iters} iterations, batch {args.batch}, seeds {args.seeds})',
    )
    print(
        "NOTE: this is NOT the paper's experiment: tiny networks, a short CPU training on BSD68 + SunHays80; a "
        'sanity check of the training stack that reports whatever difference comes out.\n'
    )
    train_sets = {name: os.path.join(args.train_data, name) for name in ('BSD68', 'SunHays80')}
    bench_sets = {name: os.path.join(args.bench_data, name) for name in ('Set5', 'Set14')}
    missing = [p for p in (*train_sets.values(), *bench_sets.values()) if not os.path.isdir(p)]
    if missing:
        print(
            f'SKIPPED: data not found: {missing}. The quality benchmark needs ../shared/data/train/{{BSD68,'
            f'SunHays80}} and ../shared/data/benchmarks/{{Set5,Set14}} (or --train-data / --bench-data).'
        )
        return

    random_clip = args.clip_pretrained in RANDOM_TAGS
    if random_clip:
        print(
            'WARNING: --clip-pretrained none: prompts come from a CLIP with RANDOM weights. They carry NO '
            'meaning; any difference between EDSR and EDSR+ below comes from the extra capacity of the DCMs, '
            'not from prompt guidance. Pass --clip-pretrained openai (or a local checkpoint) for real prompts.\n'
        )
    workdir = make_workdir(args.workdir, 'pdnsr_quality')
    t0 = time.time()
    data = prepare_data(args, train_sets, bench_sets, workdir)
    print(
        f'data: {data["n_images"]} training images -> {data["n_sub"]} HR sub-images; prompts: image (flipped LR '
        f'view), CLIP ViT-B-32 {data["clip_tag"]} weights; prepared in {time.time() - t0:.0f} s; workdir {workdir}\n',
    )
    bench = data['test']

    runs = [(net_type, seed) for seed in args.seeds for net_type in ('EDSRPlus', 'EDSR')]
    run_opts = {}
    for net_type, seed in runs:  # named after the whole option dict: data, recipe, network, CLIP weights (stores)
        opt = train_options(args, 'run', net_type, seed, data)
        opt['name'] = hashed_name(f'quality_{net_type}{bank_tag(args, net_type)}_seed{seed}', opt)
        run_opts[net_type, seed] = opt

    threads = 1 if args.jobs > 1 else args.threads
    scores, curves = {}, {}  # (net, seed) -> {set: (psnr, ssim)}; (net, seed) -> [(iter, psnr), ...]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {run: (time.time(), pool.submit(train, run_opts[run], workdir, threads)) for run in runs}
        for run in runs:
            t1, future = futures[run]
            weights = future.result()
            net_type, seed = run
            scores[run] = evaluate(args, run_opts[run], weights, bench, workdir)
            curves[run] = validation_curve(os.path.join(workdir, f'{run_opts[run]["name"]}_train.log'), args)
            print(
                f'  trained and evaluated {net_type} seed {seed} in {time.time() - t1:.0f} s: '
                + ', '.join(f'{s} {p:.2f} dB / {q:.4f}' for s, (p, q) in scores[run].items()),
            )
    print()
    if args.val_freq:
        print(
            f'Validation PSNR (dB, Y) during training on {", ".join(args.val_sets)}, every {args.val_freq} iterations\n'
        )
        points = sorted({it for curve in curves.values() for it, _, _ in curve})
        curve_rows = []
        for run in sorted(curves):
            by_iter = {(it, name): value for it, name, value in curves[run]}
            for name in args.val_sets:
                curve_rows.append(
                    [f'{run[0]} seed {run[1]}', name]
                    + [f'{by_iter[it, name]:.2f}' if (it, name) in by_iter else '' for it in points]
                )
        print_table(['run', 'set', *map(str, points)], curve_rows)

    rows = []
    for set_name in bench:
        for m, (label, digits) in enumerate((('PSNR (dB)', 3), ('SSIM', 4))):
            base = [scores['EDSR', s][set_name][m] for s in args.seeds]
            plus = [scores['EDSRPlus', s][set_name][m] for s in args.seeds]
            diff = [p - b for p, b in zip(plus, base)]
            wins = sum(d > 0 for d in diff)
            rows.append(
                [
                    set_name,
                    label,
                    mean_std(base, digits),
                    mean_std(plus, digits),
                    mean_std(diff, digits),
                    f'{wins}/{len(diff)}',
                ]
            )
    print(
        f'Y channel, crop_border {args.scale}, final weights (no EMA); mean ± std over seeds {args.seeds}; '
        f'prompts from '
        f'{"a RANDOM-weight CLIP (meaningless)" if random_clip else "CLIP " + data["clip_tag"]}\n'
    )
    print_table(
        ['set', 'metric', 'EDSR', 'EDSR+', 'EDSR+ − EDSR (paired by seed)', 'seeds where EDSR+ is better'], rows
    )
    print(f"total time {time.time() - t0:.0f} s. Not the paper's experiment (see the note above).")


if __name__ == '__main__':
    common.run_benchmark(main)
