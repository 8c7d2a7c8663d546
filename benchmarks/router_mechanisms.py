"""Candidate fixes of the DCM router's scale, for choosing among them by measurement (``bench_router.py --train``).

The paper's router reads the unit CLIP prompt, whose entries are ~1/sqrt(d): its kernel mixture barely follows the
prompt (docs/dcm.md, "The router's scale"). pdnsr ships two routers (``dcm: {router: scaled | paper}``); the other
candidates live only here, as patches of the paper router that a training run applies before basicsr builds the
network (and an evaluation before it loads one):

- ``layernorm``: ``router(LayerNorm(p))``, LayerNorm over the d entries with its affine parameters;
- ``learned``: ``router(g * p / |p|)`` with a learnable gain ``g`` initialised at sqrt(d);
- ``lr``: the paper's input, but the router's parameters train with sqrt(d) times the learning rate (Adam's step is
  independent of the gradient's size, so this moves the logits about as fast as the sqrt(d) input does);
- ``init``: the paper's input, the router's first layer initialised sqrt(d) times larger (same logit gaps at
  initialisation as ``scaled``, same Adam step size as ``paper``).

``paper`` and ``scaled`` are pdnsr's own routers, unpatched. Run as a training script::

    PDNSR_ROUTER_MECHANISM=layernorm python benchmarks/router_mechanisms.py -opt run.yml
"""

import contextlib
import math
import os
import sys

from common import REPO_ROOT  # noqa: F401  (puts this checkout first on sys.path)

# isort: split
import torch
from torch import nn

from pdnsr.archs.dcm_arch import DynamicCorrelationModule
from pdnsr.models.pdn_model import PDNModel

BUILT_IN = ('scaled', 'paper')  # pdnsr's routers: dcm.router
PATCHES = ('layernorm', 'learned', 'lr', 'init')  # patches of the paper router
ENV = 'PDNSR_ROUTER_MECHANISM'


def dcm_router(mechanism):
    """The ``dcm.router`` option a run of ``mechanism`` is built with (the patches start from the paper's)."""
    return mechanism if mechanism in BUILT_IN else 'paper'


@contextlib.contextmanager
def patched(mechanism):
    """Inside the block, pdnsr's paper router is ``mechanism`` (one of :data:`PATCHES`; unchanged otherwise)."""
    saved = DynamicCorrelationModule.__init__, DynamicCorrelationModule._router_input, PDNModel.setup_optimizers
    init, paper_input = saved[:2]

    def patched_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if not self.use_dynamic or self.router_kind != 'paper':
            return
        if mechanism == 'layernorm':
            self.router_norm = nn.LayerNorm(self.prompt_dim)
        elif mechanism == 'learned':
            self.router_gain = nn.Parameter(torch.tensor(math.sqrt(self.prompt_dim)))
        elif mechanism == 'init':
            with torch.no_grad():
                self.router[0].weight.mul_(math.sqrt(self.prompt_dim))

    def patched_input(self, prompt):
        if self.router_kind != 'paper':
            return paper_input(self, prompt)
        if mechanism == 'layernorm':
            return self.router_norm(prompt)
        if mechanism == 'learned':
            return (self._unit_prompt(prompt) * self.router_gain).to(prompt.dtype)
        return prompt

    if mechanism in PATCHES:
        DynamicCorrelationModule.__init__ = patched_init
        DynamicCorrelationModule._router_input = patched_input
        if mechanism == 'lr':
            PDNModel.setup_optimizers = _router_lr_optimizers
    try:
        yield
    finally:
        DynamicCorrelationModule.__init__, DynamicCorrelationModule._router_input, PDNModel.setup_optimizers = saved


def apply(mechanism):
    """Patch this process for good (a training run, or an evaluation in a process of its own)."""
    block = patched(mechanism)
    block.__enter__()
    _APPLIED.append(block)  # held: a collected block would close its generator and undo the patch


_APPLIED = []


def _router_lr_optimizers(self):
    """SRModel's Adam with the DCM routers' parameters in their own group at sqrt(d) times the learning rate."""
    optim = dict(self.opt['train']['optim_g'])
    kind, lr = optim.pop('type'), optim.pop('lr')
    if kind != 'Adam':
        raise ValueError(f'the lr mechanism is written for Adam, got optim_g.type {kind!r}')
    params = [p for p in self.net_g.parameters() if p.requires_grad]
    router = {
        id(p) for m in self.net_g.modules() if isinstance(m, DynamicCorrelationModule) for p in m.router.parameters()
    }
    scale = math.sqrt(self.get_bare_model(self.net_g).prompt_dim)
    groups = [
        {'params': [p for p in params if id(p) not in router]},
        {'params': [p for p in params if id(p) in router], 'lr': lr * scale},
    ]
    self.optimizer_g = torch.optim.Adam(groups, lr, **optim)
    self.optimizers.append(self.optimizer_g)


if __name__ == '__main__':
    apply(os.environ.get(ENV, ''))
    from pdnsr.cli import run_pipeline

    sys.exit(run_pipeline('train'))
