"""How much the DCM router's kernel mixture can follow a prompt, and which fix of its scale carries a caption.

First, for the two captions of the prompt-information experiment ("a sharp photo", "a blurry photo",
open_clip ViT-B-32 with random weights, as there), each router mechanism at initialisation (``--seeds`` DCMs): the
mean |router(p1) - router(p2)| over its logits, and the mean |pi(p1) - pi(p2)| at the temperatures of the paper's
schedule (34 at the start, 10 by two thirds of it, 1 at the end). With ``--weights`` (checkpoints of trained "+"
networks) and ``--opt`` the same for their DCMs.

Then, with ``--train``, the choice among the fixes (:mod:`router_mechanisms`: pdnsr's ``scaled`` and ``paper``
routers, and the candidates ``layernorm``, ``learned``, ``lr``, ``init``), by measurement. Each trains the
router-only EDSR+ (``use_attention: false``, where the router alone must carry the caption) of
``bench_prompt_information.py`` with its data and recipe, for ``--train-seeds``, and is scored like there; runs of
pdnsr's routers, and EDSR's, are reused from a ``--workdir`` that benchmark has filled. docs/dcm.md ("The router's
scale") quotes both tables.

    .venv/bin/python benchmarks/bench_router.py [--weights run/net_g_latest.pth ... --opt run.yml]
    .venv/bin/python benchmarks/bench_router.py --train --workdir /tmp/pi_full [--train-seeds 0]
"""

import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from common import make_parser, mean_std, print_header, print_table, run_benchmark, setup

# isort: split
import bench_prompt_information as bpi
import router_mechanisms as rm
import torch

from pdnsr.archs.dcm_arch import DynamicCorrelationModule, dcm_modules
from pdnsr.data.captioned_degradations import get_degradations
from pdnsr.experiments import prompt_information as pi
from pdnsr.experiments.runs import hashed_name, train_all
from pdnsr.inference import load_network
from pdnsr.prompts.encoder import PromptEncoder

TEMPERATURES = (34, 10, 1)
MECHANISMS = (*rm.BUILT_IN, *rm.PATCHES)


def gaps(dcm, prompts):
    """(mean |logit gap|, {T: mean |pi gap|}) of one DCM's router for two prompts (2, d)."""
    with torch.no_grad():
        logits = dcm.router(dcm._router_input(prompts))
        pis = {t: torch.softmax(logits / t, dim=1) for t in TEMPERATURES}
    return float((logits[0] - logits[1]).abs().mean()), {t: float((p[0] - p[1]).abs().mean()) for t, p in pis.items()}


def at_initialisation(args):
    encoder = PromptEncoder('ViT-B-32', pretrained='none', seed=0)
    prompts = encoder.encode_text([d.caption for d in get_degradations('blur')])
    captions, gap = [d.caption for d in get_degradations('blur')], float((prompts[0] - prompts[1]).norm())
    print(f'prompts: {captions}, |p1 - p2| = {gap:.3f}, entries of order 1/sqrt(d) = {512**-0.5:.3f}\n')
    rows = []
    for mechanism in MECHANISMS:
        results = []
        with rm.patched(mechanism):
            for seed in range(2 if args.quick else args.seeds):
                torch.manual_seed(seed)
                results.append(gaps(DynamicCorrelationModule(32, 512, router=rm.dcm_router(mechanism)), prompts))
        pis = (statistics.mean(r[1][t] for r in results) for t in TEMPERATURES)
        rows.append([mechanism, f'{statistics.mean(r[0] for r in results):.2e}', *(f'{p:.1e}' for p in pis)])
    for path in args.weights:
        net, _, _ = load_network(args.opt, path, 'cpu')
        for i, dcm in enumerate(d for d in dcm_modules(net) if d.use_dynamic):
            logit, pi_gap = gaps(dcm, prompts)
            rows.append(
                [f'{path} DCM {i} ({dcm.router_kind})', f'{logit:.2e}', *(f'{pi_gap[t]:.1e}' for t in TEMPERATURES)]
            )
    heads = ['router, at initialisation', 'mean abs logit gap', *(f'mean abs pi gap, T = {t}' for t in TEMPERATURES)]
    print_table(heads, rows)


def train_mechanisms(args):
    argv = ['--variants', 'router-only', '--seeds', *map(str, args.train_seeds), '--jobs', str(args.jobs)]
    bargs = bpi.parse_args(argv + ['--workdir', args.workdir] * bool(args.workdir) + ['--quick'] * args.quick)
    base = bargs.recipe
    loaded = bpi.load_data(bargs)
    if loaded is None:
        return
    data, workdir = loaded
    runs = {}  # (mechanism, seed) -> (option dict, script, environment)
    for mechanism in args.mechanisms:
        one = SimpleNamespace(variants=['router-only'], routers=[rm.dcm_router(mechanism)], dcm_bank='paper')
        (recipe,) = bpi.plus_recipes(one, base).values()  # bench_prompt_information's router-only run
        for seed in args.train_seeds:
            opt = pi.run_options(recipe, 'plus', seed, data['train'], data['prompt_dim'])
            if mechanism in rm.PATCHES:  # the paper router's option dict, trained by the patching script
                opt['name'] = hashed_name(f'info_EDSRPlus_{mechanism}_seed{seed}', opt)
                runs[mechanism, seed] = (opt, os.path.abspath(rm.__file__), {rm.ENV: mechanism})
            else:
                runs[mechanism, seed] = (opt, 'train', None)
    for seed in args.train_seeds:
        runs['baseline', seed] = (
            pi.run_options(base, 'baseline', seed, data['train'], data['prompt_dim']),
            'train',
            None,
        )

    def train(run):
        opt, script, env = runs[run]
        (weights,) = train_all([opt], workdir, 1, True, on_done=bpi.print_done, script=script, env=env).values()
        return weights

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        weights = dict(zip(runs, pool.map(train, runs)))
    jobs = {
        run: (opt, weights[run], run[0] != 'baseline', (rm.apply, run[0]) if run[0] in rm.PATCHES else None)
        for run, (opt, *_) in runs.items()
    }
    results = bpi.evaluate_all(jobs, data, base.scale, workdir, args.jobs)
    degs = [d.name for d in data['degradations']]

    def psnr(run, set_name, mode):
        return statistics.mean(v[0] for d in degs for v in results[run]['scores'][set_name][d][mode])

    print(
        'Router-only EDSR+ (use_attention: false) by router mechanism: PSNR (dB) differences over all test images, '
        f'mean ± std over seeds {args.train_seeds}; pi spread = max over DCMs of mean abs(pi(right) − pi(swapped))\n'
    )
    rows = []
    for mechanism in args.mechanisms:
        row = [mechanism]
        for set_name in bpi.TEST_SETS:
            for other in ('baseline', 'swapped'):
                diff = [
                    psnr((mechanism, s), set_name, 'right')
                    - psnr((other, s) if other == 'baseline' else (mechanism, s), set_name, other)
                    for s in args.train_seeds
                ]
                row.append(mean_std(diff, 2))
        row.append(mean_std([pi.router_spread(results[mechanism, s]['diag']) for s in args.train_seeds], 3))
        rows.append(row)
    heads = [f'{s} right − {w}' for s in bpi.TEST_SETS for w in ('EDSR', 'swapped')]
    print_table(['router', *heads, 'pi spread'], rows)


def main():
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument('--seeds', type=int, default=20, help='routers at initialisation per kind (default 20)')
    parser.add_argument('--weights', nargs='*', default=[], help='checkpoints of trained "+" networks')
    parser.add_argument('--opt', help='the option file of --weights')
    parser.add_argument('--train', action='store_true', help='train router-only EDSR+ with each --mechanisms entry')
    parser.add_argument('--mechanisms', nargs='+', choices=MECHANISMS, default=list(MECHANISMS))
    parser.add_argument('--train-seeds', type=int, nargs='+', default=[0])
    parser.add_argument('--jobs', type=int, default=2, help='runs at once, one thread each (default 2)')
    parser.add_argument('--workdir', default=None, help="bench_prompt_information.py's --workdir (runs reused)")
    args = parser.parse_args()
    setup(args)
    print_header('cpu', 'DCM router mechanisms: logit and mixture-weight gaps between two captions')
    at_initialisation(args)
    if args.train:
        train_mechanisms(args)


if __name__ == '__main__':
    run_benchmark(main)
