"""The patches basicsr 1.4.2 needs on current torch / torchvision, in one place.

``import pdnsr`` calls :func:`apply` before anything imports basicsr, then :func:`patch_basicsr` once basicsr is
importable. Nothing else in the project patches basicsr. Each patch is listed in ``docs/basicsr_compat.md``:

1. ``basicsr/data/degradations.py`` imports ``torchvision.transforms.functional_tensor``, removed in torchvision
   0.17, so every ``import basicsr`` fails. A stand-in module exposes the one function basicsr uses.
2. ``basicsr.train.load_resume_state`` maps the state to ``torch.cuda.current_device()`` (crashes without CUDA) and
   looks for ``experiments/`` relative to the current directory instead of the root path. Replaced by a version that
   loads on CPU when CUDA is absent and resolves ``--auto_resume`` under ``opt['root_path']``.
3. ``basicsr.utils.options.init_dist`` (``--launcher pytorch``) always calls ``torch.cuda.set_device`` and uses NCCL.
   On a machine without CUDA it now initialises a gloo process group instead, so ``torchrun`` works on CPU.
"""

import os
import sys
import types

import torch

_FUNCTIONAL_TENSOR = 'torchvision.transforms.functional_tensor'


def apply():
    """Make ``import basicsr`` work on torchvision >= 0.17. Idempotent."""
    if _FUNCTIONAL_TENSOR in sys.modules:
        return
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401  (old torchvision: nothing to do)

        return
    except ImportError:
        pass
    from torchvision.transforms import functional

    stand_in = types.ModuleType(_FUNCTIONAL_TENSOR)
    stand_in.rgb_to_grayscale = functional.rgb_to_grayscale
    sys.modules[_FUNCTIONAL_TENSOR] = stand_in


def load_resume_state(opt):
    """basicsr's ``load_resume_state`` that works without CUDA and finds ``--auto_resume`` states under the root."""
    from basicsr.utils import check_resume, scandir

    resume_state_path = None
    if opt['auto_resume']:
        state_dir = os.path.join(opt.get('root_path', '.'), 'experiments', opt['name'], 'training_states')
        if os.path.isdir(state_dir):
            iters = [int(v.split('.state')[0]) for v in scandir(state_dir, suffix='state', recursive=False)]
            if iters:
                resume_state_path = os.path.join(state_dir, f'{max(iters)}.state')
                opt['path']['resume_state'] = resume_state_path
    elif opt['path'].get('resume_state'):
        resume_state_path = opt['path']['resume_state']
    if resume_state_path is None:
        return None
    if not os.path.isfile(resume_state_path):
        raise FileNotFoundError(
            f'path.resume_state: {resume_state_path} does not exist; point it at a .state file '
            f'under experiments/<name>/training_states/ or use --auto_resume'
        )
    location = f'cuda:{torch.cuda.current_device()}' if torch.cuda.is_available() else 'cpu'
    # A training state holds optimizer and scheduler states (basicsr's schedulers keep Counters), which the
    # weights-only loader refuses; it is a file this project wrote itself.
    state = torch.load(resume_state_path, map_location=location, weights_only=False)
    check_resume(opt, state['iter'])
    return state


def init_dist(launcher, backend='nccl', **kwargs):
    """basicsr's ``init_dist``, with a gloo process group when CUDA is absent (``torchrun`` on CPU)."""
    from basicsr.utils import dist_util

    if launcher == 'pytorch' and not torch.cuda.is_available():
        import torch.distributed as dist

        dist.init_process_group(backend='gloo', **kwargs)
        return
    dist_util.init_dist(launcher, backend, **kwargs)


def patch_basicsr():
    """Replace the two basicsr functions above where basicsr looks them up. Idempotent."""
    import basicsr.train
    import basicsr.utils.options

    basicsr.train.load_resume_state = load_resume_state
    basicsr.utils.options.init_dist = init_dist
