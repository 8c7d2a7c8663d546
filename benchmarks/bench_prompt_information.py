"""Prompts that carry information: EDSR+ with the right, the swapped and a zero caption against EDSR, and ablations.

The full preset of :mod:`pdnsr.experiments.prompt_information` (which says what the experiment is): training
sub-images of BSD68 + SunHays80, each with one degradation named by its caption; every Set5 / Set14 image tested
under every degradation. CLIP has RANDOM weights unless ``--clip-pretrained`` names real ones: distinct captions still
give distinct embeddings, all this experiment needs. ``--variants`` adds "+" networks for the ablation of the DCM's
two halves, ``router-only`` (``use_attention: false``) and ``attention-only`` (``use_dynamic: false``), each with
every ``--routers`` entry.

    .venv/bin/python benchmarks/bench_prompt_information.py [--seeds 0 1 2] [--iters 1500] [--dcm-bank compact]
    .venv/bin/python benchmarks/bench_prompt_information.py --variants full router-only attention-only \\
        --routers scaled paper

Data, runs and evaluations stay in ``--workdir`` and are reused when identical (a run is named after a hash of its
whole option dict, an evaluation after the run and the test data).
"""

import hashlib
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

from common import REPO_ROOT, images_in, make_parser, print_header, print_table, setup

# isort: split
import cv2
import torch
import yaml

from pdnsr.archs.dcm_arch import ROUTERS
from pdnsr.cli import add_clip_arguments
from pdnsr.data.captioned_degradations import get_degradations, swapped
from pdnsr.experiments import prompt_information as pi
from pdnsr.options import write_options

SHARED = REPO_ROOT.parent / 'shared' / 'data'
TRAIN_SETS, TEST_SETS = ('BSD68', 'SunHays80'), ('Set5', 'Set14')
VARIANTS = {'full': {}, 'router-only': {'use_attention': False}, 'attention-only': {'use_dynamic': False}}
TARGETS = (1.0, 3.0)  # right − baseline, right − swapped (dB, all test images, every seed)


def parse_args():
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument('--network', choices=sorted(pi.NETWORK_PAIRS), default='EDSR', help='baseline / "+" pair')
    parser.add_argument('--dcm-bank', choices=('paper', 'compact'), default='paper', help='network_g.dcm.bank')
    parser.add_argument('--variants', nargs='+', choices=list(VARIANTS), default=['full'], help='"+" networks')
    parser.add_argument('--routers', nargs='+', choices=ROUTERS, default=[pi.DEFAULT_ROUTER], help='dcm.router')
    parser.add_argument('--dcm', nargs='*', default=[], metavar='KEY=VALUE', help='more network_g.dcm options')
    parser.add_argument('--degradations', default='blur', help='degradation set: blur (K=2) or blur-noise (K=4)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    recipe = pi.Recipe()
    for name in ('iters', 'num_block', 'num_feat', 'batch', 'gt_size', 'lr', 'warmup', 'temperature_every', 'tile'):
        kind = float if name == 'lr' else int
        parser.add_argument(f'--{name.replace("_", "-")}', type=kind, default=getattr(recipe, name))
    parser.add_argument('--jobs', type=int, default=2, help='runs at once, one thread each (default 2)')
    add_clip_arguments(parser, pretrained='none')
    parser.add_argument('--train-data', default=str(SHARED / 'train'))
    parser.add_argument('--bench-data', default=str(SHARED / 'benchmarks'))
    parser.add_argument('--workdir', default=None, help='data, stores, runs (default a new folder under /tmp)')
    args = parser.parse_args()
    args.limit = None
    if args.quick:
        args.iters, args.seeds, args.num_block, args.num_feat, args.batch, args.gt_size = 4, [0], 1, 8, 2, 32
        args.limit, args.tile = 2, 96
    args.dcm = {k: yaml.safe_load(v) for k, v in (item.split('=', 1) for item in args.dcm)}
    return args


def plus_recipes(args, base):
    """{label: Recipe} of the "+" networks: each variant with each router (a variant without router once)."""
    out = {}
    for variant in args.variants:
        dynamic = VARIANTS[variant].get('use_dynamic', True)
        for router in args.routers if dynamic else [None]:
            dcm = {'bank': args.dcm_bank, **VARIANTS[variant], **({'router': router} if router else {}), **args.dcm}
            label = variant + (f' ({router} router)' if router and len(args.routers) > 1 else '')
            out[label] = replace(base, dcm=dcm)
    return out


def _evaluate(job):
    torch.set_num_threads(1)
    result = pi.evaluate(*job)
    del result['images'], result['hr']
    return result


def main():
    t_start = time.time()
    args = parse_args()
    if setup(args).type != 'cpu':
        raise SystemExit('bench_prompt_information.py trains on the CPU through pdnsr/train.py; use --device cpu')
    names = ('network', 'iters', 'num_block', 'num_feat', 'batch', 'gt_size', 'lr', 'warmup', 'temperature_every')
    base = pi.Recipe(tile=args.tile, degradations=args.degradations, **{n: getattr(args, n) for n in names})
    recipes = plus_recipes(args, base)
    baseline, plus = pi.NETWORK_PAIRS[args.network][:2]
    print_header(
        args.device,
        f'Prompts that carry information: {baseline} vs {plus} ({", ".join(recipes)}; dcm bank {args.dcm_bank}), '
        f'x{base.scale}, {base.num_block} blocks, {base.num_feat} feat, {base.iters} iterations, batch {base.batch}, '
        f'seeds {args.seeds}',
    )
    sources = {n: os.path.join(args.train_data, n) for n in TRAIN_SETS}
    sets = {n: os.path.join(args.bench_data, n) for n in TEST_SETS}
    missing = [p for p in (*sources.values(), *sets.values()) if not os.path.isdir(p)]
    if missing:
        print(f'SKIPPED: data not found: {missing} (--train-data / --bench-data)')
        return

    from pdnsr.prompts.encoder import RANDOM_TAGS, PromptEncoder

    random_clip = args.clip_pretrained in RANDOM_TAGS
    encoder = PromptEncoder(args.clip_model, None if random_clip else args.clip_pretrained, seed=0)
    degradations = get_degradations(args.degradations)
    emb = encoder.encode_text([d.caption for d in degradations])
    print(
        f'Prompts: captions naming the degradation, encoded by open_clip {args.clip_model} with '
        + ('RANDOM weights: distinct captions still give distinct embeddings.' if random_clip else 'weights ')
        + ('' if random_clip else f'{args.clip_pretrained!r}.')
    )
    for i, d in enumerate(degradations):
        cos = ', '.join(f'{float(emb[i] @ emb[j]):.3f}' for j in range(len(degradations)))
        print(
            f'  {d.name}: {d.describe()}; caption "{d.caption}" (wrong: "{swapped(degradations, d).caption}"); '
            f'cosine with each caption {cos}'
        )

    workdir = os.path.abspath(args.workdir or os.path.join('/tmp', f'pdnsr_prompt_info_{os.getpid()}'))
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()

    def read(folder):
        return {os.path.splitext(os.path.basename(p))[0]: cv2.imread(p) for p in images_in(folder)[: args.limit]}

    train_images = {f'{prefix}_{k}': v for prefix, folder in sources.items() for k, v in read(folder).items()}
    tag = f'{args.degradations}_x{base.scale}_c{base.tile}' + ('_quick' if args.quick else '')
    clip_tag = 'random' if random_clip else os.path.basename(args.clip_pretrained)
    data_dir = os.path.join(workdir, f'data_{tag}')
    data = pi.prepare(base, train_images, {n: read(f) for n, f in sets.items()}, data_dir, encoder, clip_tag)
    prompt_dim, n_train = encoder.embed_dim, len(data['train']['assignment'])
    del encoder
    print(
        f'\ndata: {n_train} training sub-images of {base.tile} px from {"+".join(TRAIN_SETS)}; test: every image of '
        f'{", ".join(sets)} under every degradation; temperature 34 -> 1, -3 every '
        f'{pi.temperature_every(base, n_train)} epoch(s) of {max(1, n_train // base.batch)} iterations; prepared in '
        f'{time.time() - t0:.0f} s; workdir {workdir}\n',
        flush=True,
    )

    recipe_of = {'baseline': ('baseline', base), **{label: ('plus', r) for label, r in recipes.items()}}
    runs = [(label, seed) for label in [*recipes, 'baseline'] for seed in args.seeds]  # longest first
    opts = {
        run: pi.run_options(recipe_of[run[0]][1], recipe_of[run[0]][0], run[1], data['train'], prompt_dim)
        for run in runs
    }

    def done(name, seconds):
        print(f'  {name}: ' + (f'trained in {seconds:.0f} s' if seconds else 'reused from the workdir'), flush=True)

    weights = pi.train(opts, workdir, args.jobs, reuse=True, on_done=done)
    test_hash = hashlib.sha1(json.dumps(sorted(data['tests'].items())).encode()).hexdigest()[:8]
    results, todo = {}, {}
    for run in runs:
        cache = os.path.join(workdir, f'eval_{opts[run]["name"]}_{test_hash}.json')
        if os.path.exists(cache):
            with open(cache, encoding='utf-8') as f:
                results[run] = json.load(f)
        else:
            path = write_options(opts[run], os.path.join(workdir, f'{opts[run]["name"]}_eval.yml'))
            todo[run] = (cache, (path, weights[run], data['tests'], base.scale, run[0] != 'baseline'))
    t1 = time.time()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for run, result in zip(todo, pool.map(_evaluate, [job for _, job in todo.values()])):
            results[run] = result
            with open(todo[run][0], 'w', encoding='utf-8') as f:
                json.dump(result, f)
    print(f'  evaluated {len(todo)} runs in {time.time() - t1:.0f} s ({len(runs) - len(todo)} reused)\n', flush=True)
    print_tables(args, results, recipes, [d.name for d in degradations], baseline)
    print(f'total time {time.time() - t_start:.0f} s.')


def print_tables(args, results, recipes, degs, baseline):
    base_key = ('baseline', 'baseline')
    print(
        f'PSNR (dB) / SSIM on Y, crop 2, final weights; mean ± std over seeds {args.seeds}; per degradation and all\n'
    )
    for label in recipes:
        keys = [base_key] + [(label, m) for m in pi.PLUS_MODES]
        rows = []
        for set_name in TEST_SETS:
            for group, ds in [*((d, [d]) for d in degs), ('all', degs)]:
                psnr = {k: pi.seed_means(results, k, set_name, ds) for k in keys}
                ssim = {k: pi.seed_means(results, k, set_name, ds, metric=1) for k in keys}
                cells = [f'{pi.mean_std(psnr[k], 2)} / {pi.mean_std(ssim[k], 4)}' for k in keys]
                for other in (keys[0], keys[2]):
                    diff = [a - b for a, b in zip(psnr[keys[1]], psnr[other])]
                    cells.append(f'{pi.mean_std(diff, 2)} ({sum(d > 0 for d in diff)}/{len(diff)})')
                rows.append([set_name, group, *cells])
        heads = [baseline, *(f'{label}: {m}' for m in pi.PLUS_MODES), 'right − baseline (seeds > 0)', 'right − swapped']
        print_table(['set', 'degradation', *heads], rows)

    print('Per seed, PSNR (dB) over all test images\n')
    rows = []
    for label in recipes:
        for set_name in TEST_SETS:
            cols = [pi.seed_means(results, k, set_name, degs) for k in [base_key] + [(label, m) for m in pi.PLUS_MODES]]
            for seed, v in zip(args.seeds, zip(*cols)):
                rows.append(
                    [label, set_name, seed, *(f'{x:.2f}' for x in v), f'{v[1] - v[0]:+.2f}', f'{v[1] - v[2]:+.2f}']
                )
    print_table(
        ['"+" network', 'set', 'seed', baseline, 'right', 'swapped', 'zero', 'right − base', 'right − swapped'], rows
    )

    print(
        'Diagnostics per seed: router weights pi per DCM (first to last) under the right caption of each degradation; '
        'pi spread = max over DCMs of mean abs(pi(right) − pi(swapped)); mean attention mask per prompt (share '
        'saturated); mean abs(M(right) − M(swapped)); final temperature and zeta per DCM\n'
    )
    rows = []
    for label in recipes:
        for seed in args.seeds:
            res, routed = results[label, seed], 'pi' in results[label, seed]['diag'][degs[0]]
            diag = res['diag']
            pis = '; '.join(
                f'{d}: ' + ' / '.join(' '.join(f'{v:.2f}' for v in p) for p in diag[d]['pi']['right']) for d in degs
            )
            masks = '; '.join(
                f'{d}: '
                + ', '.join(
                    f'{m} {statistics.mean(v):.3f} ({statistics.mean(diag[d]["saturated"][m]):.0%})'
                    for m, v in diag[d]['mask'].items()
                )
                for d in degs
            )
            diff = [x for d in degs for x in diag[d]['right_vs_swapped']]
            rows.append(
                [
                    label,
                    seed,
                    pis if routed else 'no router',
                    f'{pi.router_spread(diag):.3f}' if routed else '—',
                    masks or 'no mask',
                    f'{statistics.mean(diff):.3f}' if diff else '—',
                    ' '.join(f'{t:g}' for t in res['temperature'])
                    + ' / '
                    + (' '.join(f'{z:.1f}' for z in res['zeta']) or '—'),
                ]
            )
    print_table(
        ['"+" network', 'seed', 'pi (right caption)', 'pi spread', 'mean mask', 'mean abs(ΔM)', 'T / zeta'], rows
    )

    print(
        f'Summary: mean over seeds of the paired differences over all test images (targets ≥ +{TARGETS[0]:g} / '
        f'≥ +{TARGETS[1]:g} dB, every seed)\n'
    )
    rows = []
    for label in recipes:
        row, met = [label], True
        for set_name in TEST_SETS:
            right = pi.seed_means(results, (label, 'right'), set_name, degs)
            for other, target in ((base_key, TARGETS[0]), ((label, 'swapped'), TARGETS[1])):
                diff = [a - b for a, b in zip(right, pi.seed_means(results, other, set_name, degs))]
                row.append(f'{pi.mean_std(diff, 2)} ({sum(d > 0 for d in diff)}/{len(diff)})')
                met &= statistics.mean(diff) >= target and all(d > 0 for d in diff)
        spread = [
            pi.router_spread(results[label, s]['diag'])
            for s in args.seeds
            if 'pi' in results[label, s]['diag'][degs[0]]
        ]
        row += [
            f'{min(spread):.2f}–{max(spread):.2f}' if spread else '—',
            'n/a (--quick)' if args.quick else ('met' if met else 'MISSED'),
        ]
        rows.append(row)
    heads = [f'{s} right − {w}' for s in TEST_SETS for w in (baseline, 'swapped')]
    print_table(['"+" network', *heads, 'pi spread (min–max)', 'targets'], rows)


if __name__ == '__main__':
    main()
