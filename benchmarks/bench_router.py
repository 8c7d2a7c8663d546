"""How much the DCM router's kernel mixture can follow a prompt: logit and weight gaps between two captions.

For the two captions of the prompt-information experiment ("a sharp photo", "a blurry photo", open_clip ViT-B-32
with random weights, as there), each router at initialisation (``--seeds`` DCMs): the mean |router(p1) - router(p2)|
over its logits, and the mean |pi(p1) - pi(p2)| at the temperatures of the paper's schedule (34 at the start, 10 by
two thirds of it, 1 at the end). With ``--weights`` (checkpoints of trained "+" networks) and ``--opt`` the same for
their DCMs. This is what docs/dcm.md ("The router's scale") quotes.

    .venv/bin/python benchmarks/bench_router.py [--weights run/net_g_latest.pth ... --opt run.yml]
"""

import statistics

from common import make_parser, print_header, print_table, setup

# isort: split
import torch

from pdnsr.archs.dcm_arch import ROUTERS, DynamicCorrelationModule, dcm_modules
from pdnsr.data.captioned_degradations import get_degradations
from pdnsr.inference import load_network
from pdnsr.prompts.encoder import PromptEncoder

TEMPERATURES = (34, 10, 1)


def gaps(dcm, prompts):
    """(mean |logit gap|, {T: mean |pi gap|}) of one DCM's router for two prompts (2, d)."""
    with torch.no_grad():
        logits = dcm.router(dcm._router_input(prompts))
        pis = {t: torch.softmax(logits / t, dim=1) for t in TEMPERATURES}
    return float((logits[0] - logits[1]).abs().mean()), {t: float((p[0] - p[1]).abs().mean()) for t, p in pis.items()}


def main():
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument('--seeds', type=int, default=20, help='routers at initialisation per kind (default 20)')
    parser.add_argument('--weights', nargs='*', default=[], help='checkpoints of trained "+" networks')
    parser.add_argument('--opt', help='the option file of --weights')
    args = parser.parse_args()
    setup(args)
    print_header('cpu', 'DCM router: logit and mixture-weight gaps between two captions')
    encoder = PromptEncoder('ViT-B-32', pretrained='none', seed=0)
    prompts = encoder.encode_text([d.caption for d in get_degradations('blur')])
    captions, gap = [d.caption for d in get_degradations('blur')], float((prompts[0] - prompts[1]).norm())
    print(f'prompts: {captions}, |p1 - p2| = {gap:.3f}, entries of order 1/sqrt(d) = {512**-0.5:.3f}\n')
    rows = []
    for router in ROUTERS:
        results = []
        for seed in range(2 if args.quick else args.seeds):
            torch.manual_seed(seed)
            results.append(gaps(DynamicCorrelationModule(32, 512, router=router), prompts))
        logit = statistics.mean(r[0] for r in results)
        rows.append(
            [
                f'{router}, at initialisation',
                f'{logit:.2e}',
                *(f'{statistics.mean(r[1][t] for r in results):.1e}' for t in TEMPERATURES),
            ]
        )
    for path in args.weights:
        net, _, _ = load_network(args.opt, path, 'cpu')
        for i, dcm in enumerate(dcm_modules(net)):
            if dcm.use_dynamic:
                logit, pi = gaps(dcm, prompts)
                rows.append(
                    [f'{path} DCM {i} ({dcm.router_kind})', f'{logit:.2e}', *(f'{pi[t]:.1e}' for t in TEMPERATURES)]
                )
    print_table(['router', 'mean abs logit gap', *(f'mean abs pi gap, T = {t}' for t in TEMPERATURES)], rows)


if __name__ == '__main__':
    main()
