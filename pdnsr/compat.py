"""The patches basicsr 1.4.2 needs on current torch / torchvision, in one place.

``import pdnsr`` calls :func:`apply` before anything imports basicsr, then :func:`patch_basicsr` once basicsr is
importable. Nothing else in the project patches basicsr. Each patch is listed in ``docs/basicsr_compat.md``:

1. ``basicsr/data/degradations.py`` imports ``torchvision.transforms.functional_tensor``, removed in torchvision
   0.17, so every ``import basicsr`` fails. A stand-in module exposes the one function basicsr uses.
2. ``basicsr.train.load_resume_state`` maps the state to ``torch.cuda.current_device()`` (crashes without CUDA),
   looks for ``experiments/`` relative to the current directory instead of the root path, unpickles the state
   (``weights_only=False``: a ``.state`` file could run code) and takes the newest state even when a crash
   truncated it. Replaced by a version that loads weights-only on the CPU, resolves ``--auto_resume`` under
   ``opt['root_path']`` and falls back to the newest readable state.
3. ``basicsr.utils.options.init_dist`` (``--launcher pytorch``) always calls ``torch.cuda.set_device`` and uses NCCL.
   On a machine without CUDA it now initialises a gloo process group instead, so ``torchrun`` works on CPU.
4. ``basicsr.utils.options.parse_options`` reads option files with YAML's full loader (``!!python/object/apply:``
   runs code; an alias bomb exhausts memory), evaluates ``--force_yml`` values with ``eval`` / ``exec``, and seeds
   the run before applying ``--force_yml`` (``manual_seed=1`` is logged but not used). Replaced, with
   ``ordered_yaml``, by :func:`pdnsr.options.parse_options` / :func:`pdnsr.options.ordered_yaml`: safe, bounded,
   and ``--force_yml`` applied first.
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
    """basicsr's ``load_resume_state``, made safe: it works without CUDA, finds ``--auto_resume`` states under the
    root path, loads states with ``weights_only=True`` (:func:`pdnsr.checkpoints.read_training_state`), and skips a
    newest state that cannot be read (a crash while it was written), or whose network file cannot, with one line
    naming it, resuming from the newest good one."""
    import sys

    from basicsr.utils import check_resume, scandir

    from pdnsr.checkpoints import read_checkpoint, read_training_state

    if opt['auto_resume']:
        state_dir = os.path.join(opt.get('root_path', '.'), 'experiments', opt['name'], 'training_states')
        found = os.path.isdir(state_dir) and list(scandir(state_dir, suffix='state', recursive=False))
        iters = sorted((int(v.split('.state')[0]) for v in found or [] if v.split('.state')[0].isdigit()), reverse=True)
        models = os.path.join(opt.get('root_path', '.'), 'experiments', opt['name'], 'models')
        for it in iters:
            path = os.path.join(state_dir, f'{it}.state')
            try:
                state = read_training_state(path)
                read_checkpoint(os.path.join(models, f'net_g_{it}.pth'), 'network checkpoint')
            except (OSError, ValueError) as err:
                print(f'--auto_resume: skipping iteration {it}: {" ".join(str(err).split())}', file=sys.stderr)
                continue
            opt['path']['resume_state'] = path
            check_resume(opt, state['iter'])
            return state
        return None
    path = opt['path'].get('resume_state')
    if not path:
        return None
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'path.resume_state: {path} does not exist; point it at a .state file '
            f'under experiments/<name>/training_states/ or use --auto_resume'
        )
    state = read_training_state(path)
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
    """Replace the basicsr functions above where basicsr looks them up. Idempotent."""
    import basicsr.test
    import basicsr.train
    import basicsr.utils.options

    from pdnsr import options

    basicsr.train.load_resume_state = load_resume_state
    basicsr.utils.options.init_dist = init_dist
    basicsr.utils.options.ordered_yaml = options.ordered_yaml
    for module in (basicsr.utils.options, basicsr.train, basicsr.test):
        module.parse_options = options.parse_options
