"""Prompts that carry information: EDSR+ with the right, the swapped and a zero caption against EDSR, and ablations.

The full preset of :mod:`pdnsr.tools.experiments.prompt_information` (which says what the experiment is), with CLIP's
RANDOM weights unless ``--clip-pretrained`` names real ones (distinct captions still give distinct embeddings, all
it needs). ``--variants`` adds the ablation of the DCM's two halves, ``router-only`` (``use_attention: false``) and
``attention-only`` (``use_dynamic: false``), each with every ``--routers`` entry.

    .venv/bin/python benchmarks/bench_prompt_information.py [--seeds 0 1 2] [--iters 1500] [--dcm-bank compact]
    .venv/bin/python benchmarks/bench_prompt_information.py --variants full router-only attention-only \\
        --routers scaled paper

Data, runs and evaluations stay in ``--workdir`` and are reused when identical (data is named after a hash of its
source folders and recipe, a run after its whole option dict, an evaluation after the run and the test data).
"""

import hashlib
import itertools
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from statistics import mean

import common
from common import SHARED_DATA, images_in, make_parser, make_workdir, mean_std, print_header, print_table, setup

# isort: split
import torch

from pdnsr.archs.dcm_arch import ROUTERS
from pdnsr.data.image_files import read_bgr
from pdnsr.options import write_options
from pdnsr.prompts.encoder import RANDOM_TAGS
from pdnsr.tools.cli import add_clip_arguments
from pdnsr.tools.experiments import prompt_information as pi
from pdnsr.tools.experiments.runs import hashed_name, train_all
from pdnsr.utils.files import write_text

TRAIN_SETS, TEST_SETS = ('BSD68', 'SunHays80'), ('Set5', 'Set14')
VARIANTS = {'full': {}, 'router-only': {'use_attention': False}, 'attention-only': {'use_dynamic': False}}
TARGETS = (1.0, 3.0)  # right − baseline, right − swapped (dB, all test images, every seed)
PI_TARGET = 0.2  # pi spread, every seed, where the router is to carry the caption (issue 15)
DATA_FIELDS = ('degradations', 'scale', 'tile', 'centre_crop')  # of pi.Recipe, what pi.prepare reads
RECIPE_ARGS = ('iters', 'num_block', 'num_feat', 'batch', 'gt_size', 'lr', 'warmup', 'temperature_every', 'tile')


def parse_args(argv=None):
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument('--network', choices=sorted(pi.NETWORK_PAIRS), default='EDSR', help='baseline / "+" pair')
    parser.add_argument('--dcm-bank', choices=('paper', 'compact'), default='paper', help='network_g.dcm.bank')
    parser.add_argument('--variants', nargs='+', choices=list(VARIANTS), default=['full'], help='"+" networks')
    parser.add_argument('--routers', nargs='+', choices=ROUTERS, default=[pi.DEFAULT_ROUTER], help='dcm.router')
    parser.add_argument('--degradations', default='blur', help='degradation set: blur (K=2) or blur-noise (K=4)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    for name in RECIPE_ARGS:
        kind = float if name == 'lr' else int
        parser.add_argument(f'--{name.replace("_", "-")}', type=kind, default=getattr(pi.Recipe(), name))
    parser.add_argument('--jobs', type=int, default=2, help='runs at once, one thread each (default 2)')
    add_clip_arguments(parser, pretrained='none')
    parser.add_argument('--train-data', default=str(SHARED_DATA / 'train'))
    parser.add_argument('--bench-data', default=str(SHARED_DATA / 'benchmarks'))
    parser.add_argument('--workdir', default=None, help='data, stores, runs (default a new folder under /tmp)')
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(iters=4, seeds=[0], num_block=1, num_feat=8, batch=2, gt_size=32, tile=96)
    args.limit = 2 if args.quick else None  # images per source folder
    args.recipe = pi.Recipe(**{n: getattr(args, n) for n in ('network', 'degradations', *RECIPE_ARGS)})
    return args


def plus_recipes(args, base):
    """{label: Recipe} of the "+" networks: each variant with each router (a variant without router once)."""
    out = {}
    for variant in args.variants:
        dynamic = VARIANTS[variant].get('use_dynamic', True)
        for router in args.routers if dynamic else [None]:
            dcm = {'bank': args.dcm_bank, **VARIANTS[variant], **({'router': router} if router else {})}
            label = variant + (f' ({router} router)' if router and len(args.routers) > 1 else '')
            out[label] = replace(base, dcm=dcm)
    return out


def _evaluate(job):
    (opt, weights, prompted, patch), path, tests, scale = job
    torch.set_num_threads(1)
    if patch is not None:  # a function and its argument, applied in the worker first (bench_router.py --train)
        patch[0](patch[1])
    return pi.evaluate(write_options(opt, path), weights, tests, scale, prompted)


def load_data(args):
    """The data of ``args.recipe`` in ``args.workdir`` (prepared there once, then reused), with what it is printed:
    ``(pi.prepare's dict, workdir)``, or None when the source images are missing."""
    base = args.recipe
    sources = {n: os.path.join(args.train_data, n) for n in TRAIN_SETS}
    sets = {n: os.path.join(args.bench_data, n) for n in TEST_SETS}
    missing = [p for p in (*sources.values(), *sets.values()) if not os.path.isdir(p)]
    if missing:
        print(f'SKIPPED: data not found: {missing} (--train-data / --bench-data)')
        return None
    workdir = make_workdir(args.workdir, 'pdnsr_prompt_info')
    t0 = time.time()

    def read(folder):
        return {os.path.splitext(os.path.basename(p))[0]: read_bgr(p)[0] for p in images_in(folder)[: args.limit]}

    train_images = {f'{prefix}_{k}': v for prefix, folder in sources.items() for k, v in read(folder).items()}
    # Named after everything that decides the data: another source folder or data recipe never reuses it.
    key = dict(sources=sources, sets=sets, limit=args.limit, recipe={f: getattr(base, f) for f in DATA_FIELDS})
    data_dir = os.path.join(workdir, hashed_name('data', key))
    test_images = {n: read(f) for n, f in sets.items()}
    data = pi.prepare(base, train_images, test_images, data_dir, args.clip_model, args.clip_pretrained)
    n_train = len(data['train']['assignment'])
    clip = 'RANDOM weights: distinct captions still give distinct embeddings.'
    clip = clip if args.clip_pretrained in RANDOM_TAGS else f'weights {args.clip_pretrained!r}.'
    print(f'Prompts: captions naming the degradation, encoded by open_clip {args.clip_model} with {clip}')
    emb = data['caption_embeddings']
    for line, row in zip(pi.caption_lines(data['degradations']), emb):
        print(f'  {line}; cosine with each caption ' + ', '.join(f'{float(row @ other):.3f}' for other in emb))
    print(
        f'\ndata: {n_train} training sub-images of {base.tile} px from {"+".join(TRAIN_SETS)}; test: every image of '
        f'{", ".join(sets)} under every degradation; temperature 34 -> 1, -3 every '
        f'{pi.temperature_every(base, n_train)} epoch(s) of {max(1, n_train // base.batch)} iterations; prepared in '
        f'{time.time() - t0:.0f} s; workdir {workdir}\n',
    )
    return data, workdir


def evaluate_all(runs, data, scale, workdir, jobs):
    """Scores of trained runs ``{run: (option dict, weights, prompted, patch)}`` on the test data (``patch``: None,
    or ``(function, argument)`` to apply in the evaluating process first), ``jobs`` at once; each evaluation is kept
    in the workdir under its run's name and a hash of the test data, and reused. Returns ``{run: result}``."""
    test_hash = hashlib.sha1(json.dumps(sorted(data['tests'].items())).encode()).hexdigest()[:8]
    cache = {run: Path(workdir, f'eval_{opt["name"]}_{test_hash}.json') for run, (opt, *_) in runs.items()}
    todo = [run for run in runs if not cache[run].exists()]
    work = [(runs[r], os.path.join(workdir, f'{runs[r][0]["name"]}_eval.yml'), data['tests'], scale) for r in todo]
    t1 = time.time()
    with ProcessPoolExecutor(max_workers=jobs, max_tasks_per_child=1) as pool:  # a fresh process per evaluation
        for run, result in zip(todo, pool.map(_evaluate, work)):
            write_text(cache[run], json.dumps(result))  # a cache file that exists is complete
    print(f'  evaluated {len(todo)} runs in {time.time() - t1:.0f} s ({len(runs) - len(todo)} reused)\n')
    return {run: json.loads(cache[run].read_text(encoding='utf-8')) for run in runs}


def print_done(name, seconds):  # one write per line: runs finish in threads
    sys.stdout.write(f'  {name}: ' + (f'trained in {seconds:.0f} s\n' if seconds else 'reused from the workdir\n'))


def main():
    t_start = time.time()
    args = parse_args()
    if setup(args).type != 'cpu':
        raise SystemExit('bench_prompt_information.py trains on the CPU through pdnsr/train.py; use --device cpu')
    base = args.recipe  # the baseline's, and the "+" networks' but for network_g.dcm
    recipes = plus_recipes(args, base)
    baseline, plus = pi.NETWORK_PAIRS[args.network]
    print_header(
        args.device,
        f'Prompts that carry information: {baseline} vs {plus} ({", ".join(recipes)}; dcm bank {args.dcm_bank}), '
        f'x{base.scale}, {base.num_block} blocks, {base.num_feat} feat, {base.iters} iterations, batch {base.batch}, '
        f'seeds {args.seeds}',
    )
    if (loaded := load_data(args)) is None:  # the data is missing: said, and skipped
        return
    data, workdir = loaded
    recipe_of = {'baseline': (base, 'baseline'), **{label: (r, 'plus') for label, r in recipes.items()}}
    runs = [(label, seed) for label in [*recipes, 'baseline'] for seed in args.seeds]  # longest first
    opts = {run: pi.run_options(*recipe_of[run[0]], run[1], data['train'], data['prompt_dim']) for run in runs}
    weights = train_all(list(opts.values()), workdir, args.jobs, reuse=True, on_done=print_done)
    todo = {run: (opts[run], weights[opts[run]['name']], run[0] != 'baseline', None) for run in runs}
    results = evaluate_all(todo, data, base.scale, workdir, args.jobs)
    print_tables(args, results, recipes, [d.name for d in data['degradations']], baseline)
    print(f'total time {time.time() - t_start:.0f} s.')


def diagnostics(res, degs, routed):
    """The diagnostics cells of one "+" run (``diag``, ``temperature``, ``zeta`` of :func:`pi.evaluate`)."""
    diag = res['diag']

    def per_degradation(cell):
        return '; '.join(f'{d}: {cell(diag[d])}' for d in degs)

    pis = per_degradation(lambda g: ' / '.join(' '.join(f'{v:.2f}' for v in p) for p in g['pi']['right']))
    masks = per_degradation(
        lambda g: ', '.join(f'{m} {mean(v):.3f} ({mean(g["saturated"][m]):.0%})' for m, v in g['mask'].items())
    )
    diff = [x for d in degs for x in diag[d]['right_vs_swapped']]  # empty when the DCMs have no attention
    return [
        pis if routed else 'no router (use_dynamic: false)',
        f'{pi.router_spread(diag):.3f}' if routed else '—',
        masks if diff else 'no mask (use_attention: false)',
        f'{mean(diff):.3f}' if diff else '—',
        ' '.join(f'{t:g}' for t in res['temperature']) + ' / ' + (' '.join(f'{z:.1f}' for z in res['zeta']) or '—'),
    ]


def print_tables(args, results, recipes, degs, baseline):
    base, seeds = ('baseline', 'baseline'), sorted(args.seeds)

    def psnr(key, set_name, ds=degs, metric=0):  # per seed, the mean over the images of degradations ds
        net, mode = key
        return [mean(v[metric] for d in ds for v in results[net, s]['scores'][set_name][d][mode]) for s in seeds]

    def paired(a, b):  # the paired differences a - b over seeds, and a cell of them with how many are positive
        diff = [x - y for x, y in zip(a, b)]
        return diff, f'{mean_std(diff, 2)} ({sum(d > 0 for d in diff)}/{len(diff)})'

    print(
        f'PSNR (dB) / SSIM on Y, crop 2, final weights; mean ± std over seeds {args.seeds}; per degradation and all\n'
    )
    every = {}  # (label, set, degradation or 'all') -> per key, the PSNR of each seed
    for label in recipes:
        keys, rows = [base, *((label, m) for m in pi.PLUS_MODES)], []
        for set_name, (group, ds) in itertools.product(TEST_SETS, [*((d, [d]) for d in degs), ('all', degs)]):
            p = [psnr(k, set_name, ds) for k in keys]
            cells = [f'{mean_std(v, 2)} / {mean_std(psnr(k, set_name, ds, 1), 4)}' for k, v in zip(keys, p)]
            diffs = [paired(p[1], p[0]), paired(p[1], p[2])]
            rows.append([set_name, group, *cells, *(cell for _, cell in diffs)])
            every[label, set_name, group] = p
        heads = [baseline, *(f'{label}: {m}' for m in pi.PLUS_MODES), 'right − baseline (seeds > 0)', 'right − swapped']
        print_table(['set', 'degradation', *heads], rows)

    print('Per seed, PSNR (dB) over all test images\n')
    rows = [
        [label, set_name, seed, *(f'{x:.2f}' for x in v), f'{v[1] - v[0]:+.2f}', f'{v[1] - v[2]:+.2f}']
        for (label, set_name, group), p in every.items()
        if group == 'all'
        for seed, v in zip(seeds, zip(*p))
    ]
    heads = [baseline, 'right', 'swapped', 'zero', 'right − base', 'right − swapped']
    print_table(['"+" network', 'set', 'seed', *heads], rows)

    print(
        'Diagnostics per seed: router weights pi per DCM (first to last) under the right caption of each degradation; '
        'pi spread = max over DCMs of mean abs(pi(right) − pi(swapped)); mean attention mask per prompt (share '
        'saturated); mean abs(M(right) − M(swapped)); final temperature and zeta per DCM\n'
    )
    rows = [
        [label, s, *diagnostics(results[label, s], degs, recipes[label].dcm.get('use_dynamic', True))]
        for label, s in itertools.product(recipes, seeds)
    ]
    heads = ['pi (right caption)', 'pi spread', 'mean mask', 'mean abs(ΔM)', 'T / zeta']
    print_table(['"+" network', 'seed', *heads], rows)

    print(
        f'Summary: mean over seeds of the paired differences over all test images. Targets (issue 15): right − '
        f'{baseline} ≥ +{TARGETS[0]:g} dB and right − swapped ≥ +{TARGETS[1]:g} dB on each set, every seed '
        f'positive; pi spread ≥ {PI_TARGET:g} on every seed where the router is to carry the caption (router-only, '
        f'full with the scaled router)\n'
    )
    rows = []
    for label, recipe in recipes.items():  # right − baseline and right − swapped on each set
        overall = [paired(p[1], p[j]) for p in (every[label, s, 'all'] for s in TEST_SETS) for j in (0, 2)]
        row = [label, *(cell for _, cell in overall)]
        missed = {'dB'} if any(mean(d) < t or min(d) <= 0 for (d, _), t in zip(overall, TARGETS * 2)) else set()
        routed = recipe.dcm.get('use_dynamic', True)  # attention-only DCMs have one fixed kernel, no router
        spread = [pi.router_spread(results[label, s]['diag']) for s in seeds] if routed else []
        wanted = spread and (not recipe.dcm.get('use_attention', True) or recipe.dcm.get('router') == 'scaled')
        missed |= {'pi spread'} if wanted and min(spread) < PI_TARGET else set()
        verdict = 'n/a (--quick)' if args.quick else ('MISSED: ' + ', '.join(sorted(missed)) if missed else 'met')
        spread_cell = f'{min(spread):.2f}–{max(spread):.2f}' if spread else '—'
        rows.append([*row, spread_cell, f'≥ {PI_TARGET:g}' if wanted else '—', verdict])
    heads = [f'{s} right − {w}' for s in TEST_SETS for w in (baseline, 'swapped')]
    print_table(['"+" network', *heads, 'pi spread (min–max)', 'pi spread target', 'targets'], rows)


if __name__ == '__main__':
    common.run_benchmark(main)
