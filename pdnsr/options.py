"""Option files: the one reader of every option file pdnsr reads, basicsr's ``parse_options`` made safe, and the
one builder of option dicts (the generator of ``options/``, the demo, the benchmarks and the tests).

Reading (:func:`read_option_file`, :func:`parse_options`): an option file is data, like a weights file. It is read
with YAML's safe constructors only (a ``!!python/...`` tag is refused, never run), mappings as basicsr's
``OrderedDict``, and bounded: at most :data:`MAX_OPTION_BYTES` bytes and :data:`MAX_OPTION_NODES` values once
aliases are expanded, so an alias bomb is one line in milliseconds. ``pdnsr.compat`` puts it under basicsr's own
``parse_options`` and ``ordered_yaml``, so ``pdnsr/train.py`` and ``pdnsr/test.py`` read through it too.

Building: each function returns a plain dict in basicsr's option layout; callers change what differs and dump it with
:func:`write_options` (atomic; optional comments, see :func:`to_yaml`). A prompt-guided network type (one that
takes ``prompt_dim``, see :func:`pdnsr.archs.type_takes_prompt`) gets ``PromptPairedImageDataset`` datasets with
``dataroot_prompt`` from the caller; a baseline gets basicsr's ``PairedImageDataset`` from the same arguments, so a
baseline and its "+" twin share one recipe.
"""

import argparse
import os
import random
import re
from collections import OrderedDict

import yaml

from pdnsr.archs.dcm_arch import type_takes_prompt
from pdnsr.archs.network_options import network_parameters
from pdnsr.archs.plus_util import DCM_OPTIONS
from pdnsr.utils.files import write_text

MAX_OPTION_BYTES = 1 << 20  # basicsr's option files are a few kB
MAX_OPTION_NODES = 100_000  # values and keys once every alias is expanded


class _TooLarge(yaml.YAMLError):
    """What the aliases of an option file expand to is over the bound, or never ends."""


class _OptionLoader(yaml.SafeLoader):
    """YAML's safe loader with basicsr's ordered mappings and a bound on what aliases expand to."""

    def compose_document(self):
        node = super().compose_document()
        sizes = {}

        def size(n):  # the node count with every alias expanded; each shared node measured once: linear time
            if id(n) in sizes:
                if sizes[id(n)] is None:
                    raise _TooLarge('an alias refers to the value that holds it (a recursive alias)')
                return sizes[id(n)]
            sizes[id(n)] = None
            children = n.value if isinstance(n, yaml.SequenceNode) else ()
            if isinstance(n, yaml.MappingNode):
                children = [c for pair in n.value for c in pair]
            sizes[id(n)] = min(1 + sum(size(c) for c in children), MAX_OPTION_NODES + 1)
            return sizes[id(n)]

        if node is not None and size(node) > MAX_OPTION_NODES:
            raise _TooLarge(f'its aliases expand to more than {MAX_OPTION_NODES:,} values (an alias bomb?)')
        return node


_OptionLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, lambda loader, node: OrderedDict(loader.construct_pairs(node))
)


def read_option_file(path, what='option file'):
    """The content of the YAML option file ``path`` (mappings as ``OrderedDict``), read as data.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming ``what``, the file and the problem: not YAML, a Python tag (``!!python/object
            /apply:os.system`` would run a command), more than :data:`MAX_OPTION_BYTES` bytes, or aliases that
            expand to more than :data:`MAX_OPTION_NODES` values.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{what} {path} does not exist')
    size = os.path.getsize(path)
    if size > MAX_OPTION_BYTES:
        raise ValueError(f'{what} {path} has {size:,} bytes, over the {MAX_OPTION_BYTES:,} an option file may have')
    try:
        with open(path, encoding='utf-8') as f:
            return yaml.load(f, Loader=_OptionLoader)  # noqa: S506  (a safe loader)
    except yaml.constructor.ConstructorError as err:
        tag = getattr(err.problem_mark, 'line', None)
        where = f' (line {tag + 1})' if tag is not None else ''
        raise ValueError(
            f'{what} {path}{where}: {" ".join(str(err.problem).split())}; an option file holds data only (a Python '
            'tag would run code): remove the tag'
        ) from None
    except _TooLarge as err:
        raise ValueError(f'{what} {path}: {err}; an option file lists its options') from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f'{what} {path} is not a usable YAML file: {" ".join(str(err).split())}') from None


def ordered_yaml():
    """basicsr's ``ordered_yaml()`` (a loader and a dumper of ``OrderedDict``), with pdnsr's safe, bounded loader."""
    return _OptionLoader, _Dumper


def force_yml_value(text):
    """A ``--force_yml key=value`` value as basicsr reads it (``~`` / none, true / false, numbers, ``[lists]``),
    without basicsr's ``eval``: a list is read as YAML."""
    from basicsr.utils.options import _postprocess_yml_value

    if text.startswith('['):
        try:
            return yaml.load(text, Loader=_OptionLoader)  # noqa: S506  (a safe loader)
        except yaml.YAMLError as err:
            raise ValueError(f'--force_yml value {text!r} is not a list: {" ".join(str(err).split())}') from None
    return _postprocess_yml_value(text)


def apply_force_yml(opt, entries):
    """Apply ``--force_yml`` entries (``train:ema_decay=0.999``) to ``opt`` in place; a missing section is made."""
    for entry in entries or []:
        keys, equals, value = entry.partition('=')
        *parents, last = keys.strip().split(':')
        if not equals or not last:
            raise ValueError(f'--force_yml {entry!r}: write section:key=value, e.g. train:ema_decay=0.999')
        target = opt
        for key in parents:
            target = target.setdefault(key, OrderedDict())
            if not isinstance(target, dict):
                raise ValueError(f'--force_yml {entry!r}: {key} is not a section of the option file')
        target[last] = force_yml_value(value.strip())


def parse_options(root_path, is_train=True, effects=True, argv=None):
    """basicsr's ``parse_options``, reading the file with :func:`read_option_file` and applying ``--force_yml``
    before anything reads the options, so that ``--force_yml manual_seed=1`` seeds the run (basicsr seeds first and
    would log a seed it did not use).

    Args:
        root_path (str): where ``experiments/`` and ``results/`` go.
        is_train (bool): a training run (else a test run).
        effects (bool): initialise the process group, seed the random generators and print as basicsr does; False
            for :func:`pdnsr.models.run_checks.preflight`, which only reads.
        argv (list | None): the command line (default ``sys.argv[1:]``).

    Returns:
        tuple: ``(opt, args)`` as basicsr's.
    """
    from basicsr.utils import set_random_seed
    from basicsr.utils.dist_util import get_dist_info
    from basicsr.utils.options import init_dist

    parser = argparse.ArgumentParser()
    parser.add_argument('-opt', type=str, required=True, help='Path to option YAML file.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none', help='job launcher')
    parser.add_argument('--auto_resume', action='store_true')
    parser.add_argument('--debug', action='store_true')
    parser.add_argument('--local_rank', type=int, default=0)
    parser.add_argument('--force_yml', nargs='+', default=None, help='update options: train:ema_decay=0.999')
    args = parser.parse_args(argv)
    opt = read_option_file(args.opt, '-opt')
    if not isinstance(opt, dict):
        raise ValueError(f'-opt {args.opt}: an option file is a mapping of sections, not a {type(opt).__name__}')
    apply_force_yml(opt, args.force_yml)

    opt['dist'] = args.launcher != 'none'
    if effects:
        if not opt['dist']:
            print('Disable distributed.', flush=True)
        elif args.launcher == 'slurm' and 'dist_params' in opt:
            init_dist(args.launcher, **opt['dist_params'])
        else:
            init_dist(args.launcher)
        opt['rank'], opt['world_size'] = get_dist_info()
    else:
        opt['rank'], opt['world_size'] = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
    if opt.get('manual_seed') is None:
        opt['manual_seed'] = random.randint(1, 10000)
    if effects:
        set_random_seed(opt['manual_seed'] + opt['rank'])

    opt['auto_resume'] = args.auto_resume
    opt['is_train'] = is_train
    if args.debug and not str(opt.get('name', '')).startswith('debug'):
        opt['name'] = f'debug_{opt.get("name")}'
    if opt.get('num_gpu') == 'auto':
        import torch

        opt['num_gpu'] = torch.cuda.device_count()
    for phase, dataset in (opt.get('datasets') or {}).items():
        if not isinstance(dataset, dict):
            raise ValueError(f'-opt {args.opt}: datasets.{phase} is not a section (a mapping of dataset options)')
        dataset['phase'] = phase.split('_')[0]
        if 'scale' in opt:
            dataset['scale'] = opt['scale']
        for key in ('dataroot_gt', 'dataroot_lq'):
            if dataset.get(key) is not None:
                dataset[key] = os.path.expanduser(dataset[key])
    paths = opt.setdefault('path', OrderedDict())
    for key, val in paths.items():
        if val is not None and ('resume_state' in key or 'pretrain_network' in key):
            paths[key] = os.path.expanduser(val)
    name = opt.get('name')
    if is_train:
        root = os.path.join(root_path, 'experiments', str(name))
        paths.update(experiments_root=root, models=os.path.join(root, 'models'), log=root)
        paths.update(
            training_states=os.path.join(root, 'training_states'), visualization=os.path.join(root, 'visualization')
        )
        if 'debug' in str(name):
            if 'val' in opt:
                opt['val']['val_freq'] = 8
            opt.setdefault('logger', OrderedDict()).update(print_freq=1, save_checkpoint_freq=8)
    else:
        root = os.path.join(root_path, 'results', str(name))
        paths.update(results_root=root, log=root, visualization=os.path.join(root, 'visualization'))
    return opt, args


def psnr_ssim_metrics(scale):
    """basicsr's PSNR / SSIM on the Y channel with ``scale`` border pixels cropped (the paper's protocol)."""
    return {name: dict(type=f'calculate_{name}', crop_border=scale, test_y_channel=True) for name in ('psnr', 'ssim')}


def dataset(name, hr, lr, prompts=None, prompted=False):
    """A paired dataset section (validation / test form). ``prompted`` adds ``dataroot_prompt: prompts``."""
    if prompted and not prompts:
        raise ValueError(f'dataset {name}: a prompt-guided network needs a prompt store (dataroot_prompt)')
    opt = dict(
        name=name,
        type='PromptPairedImageDataset' if prompted else 'PairedImageDataset',
        dataroot_gt=hr,
        dataroot_lq=lr,
    )
    if prompted:
        opt['dataroot_prompt'] = prompts
    opt['io_backend'] = dict(type='disk')
    return opt


def train_dataset(name, hr, lr, gt_size, batch_size, prompts=None, prompted=False, workers=0, enlarge=1):
    """A training dataset section: random ``gt_size`` crops, flips and rotations, ``batch_size`` per GPU."""
    return dict(
        dataset(name, hr, lr, prompts, prompted),
        gt_size=gt_size,
        use_hflip=True,
        use_rot=True,
        num_worker_per_gpu=workers,
        batch_size_per_gpu=batch_size,
        dataset_enlarge_ratio=enlarge,
        prefetch_mode=None,
    )


def network(net_type, scale, prompt_dim=512, dcm=None, **args):
    """``network_g``: ``type``, 3 -> 3 channels, the scale, the type's own ``args``; prompt options if prompted.

    Names follow the type's constructor: ``num_in_ch`` / ``num_out_ch`` or SwinIR's ``in_chans``, ``upscale`` or
    RRDBNet's ``scale``.
    """
    params = network_parameters(net_type)
    channels = dict(in_chans=3) if 'in_chans' in params else dict(num_in_ch=3, num_out_ch=3)
    factor = 'scale' if 'scale' in params and 'upscale' not in params else 'upscale'
    opt = dict(type=net_type, **channels, **args, **{factor: scale})
    if type_takes_prompt(net_type):
        opt['prompt_dim'] = prompt_dim
        dcm = dict(dcm or {})
        if dcm.get('use_dynamic', True):
            # The router is written out: its default changed once ('paper' -> 'scaled'), and a run named after a
            # hash of its option dict must not be mistaken for one trained with the other router.
            dcm.setdefault('router', DCM_OPTIONS['router'])
        opt['dcm'] = dcm
    return opt


def _run(name, scale, num_gpu, seed, datasets, network_g):
    """The sections every run of PDNModel starts with, in basicsr's order."""
    return dict(
        name=name,
        model_type='PDNModel',
        scale=scale,
        num_gpu=num_gpu,
        manual_seed=seed,
        datasets=datasets,
        network_g=network_g,
    )


def train_options(
    name,
    network_g,
    train_set,
    scale,
    iters,
    lr,
    val_sets=None,
    seed=0,
    num_gpu=0,
    warmup_iter=-1,
    ema_decay=0,
    betas=(0.9, 0.999),
    eta_min=1e-7,
    temperature=None,
    print_freq=100,
    checkpoint_freq=None,
    val_freq=None,
    use_tb_logger=False,
):
    """A whole training option dict for ``pdnsr/train.py``: PDNModel, Adam + cosine annealing, L1 loss.

    ``temperature`` (``{init, step, every_epochs, min}``) is written for prompt-guided networks only; None means
    the paper's schedule (PDNModel's default). ``val_sets``: {key: dataset dict} validated every ``val_freq``.
    """
    opt = dict(
        _run(name, scale, num_gpu, seed, dict(train=train_set, **(val_sets or {})), network_g),
        path=dict(pretrain_network_g=None, strict_load_g=True, resume_state=None),
        train=dict(
            ema_decay=ema_decay,
            optim_g=dict(type='Adam', lr=lr, weight_decay=0, betas=list(betas), eps=1e-8),
            scheduler=dict(type='CosineAnnealingRestartLR', periods=[iters], restart_weights=[1], eta_min=eta_min),
            total_iter=iters,
            warmup_iter=warmup_iter,
            pixel_opt=dict(type='L1Loss', loss_weight=1.0, reduction='mean'),
        ),
    )
    if temperature is not None and type_takes_prompt(network_g['type']):
        opt['train']['temperature'] = dict(temperature)
    if val_sets:
        opt['val'] = dict(val_freq=val_freq or iters, save_img=False, metrics=psnr_ssim_metrics(scale))
    opt['logger'] = dict(
        print_freq=print_freq, save_checkpoint_freq=checkpoint_freq or iters, use_tb_logger=use_tb_logger
    )
    return opt


def test_options(name, network_g, test_sets, scale, weights, num_gpu=0, seed=0, param_key='params', save_img=True):
    """A whole test option dict for ``pdnsr/test.py``: PDNModel, ``weights`` loaded strictly, PSNR / SSIM.

    ``test_sets``: {key: dataset dict} (keys ``test_1``, ``test_2``... as basicsr expects). A prompt-guided network
    also gets ``val.save_attention: false`` (set DCM indices to save attention heat maps).
    """
    opt = dict(
        _run(name, scale, num_gpu, seed, dict(test_sets), network_g),
        path=dict(pretrain_network_g=weights, param_key_g=param_key, strict_load_g=True),
        val=dict(save_img=save_img, suffix=None),
    )
    if type_takes_prompt(network_g['type']):
        opt['val']['save_attention'] = False
    opt['val']['metrics'] = psnr_ssim_metrics(scale)
    return opt


class _Dumper(yaml.SafeDumper):
    """basicsr's option style: block mappings, ``[a, b]`` for lists of scalars, ``~`` for null."""


_Dumper.add_representer(type(None), lambda dumper, _: dumper.represent_scalar('tag:yaml.org,2002:null', '~'))
_Dumper.add_representer(
    list,
    lambda dumper, data: dumper.represent_sequence(
        'tag:yaml.org,2002:seq', data, flow_style=all(not isinstance(v, (dict, list)) for v in data)
    ),
)
_Dumper.add_representer(OrderedDict, lambda dumper, data: dumper.represent_dict(data.items()))
_KEY_LINE = re.compile(r'^( *)([^\s#:][^:]*):( .*)?$')


def to_yaml(opt, comments=None):
    """``opt`` as YAML text, with comments.

    Args:
        opt (dict): the option dict (plain dicts, lists, scalars).
        comments (dict | None): ``{key path: comment}``. A key path is a tuple of keys, e.g. ``('train',
            'ema_decay')``; a string comment goes at the end of that key's line, a list of strings on lines of their
            own above it. The path ``()`` puts its lines at the top of the file.

    Returns:
        str: the text; every top-level section that is a mapping is preceded by a blank line.
    """
    comments = dict(comments or {})
    text = yaml.dump(opt, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)
    out = [f'# {line}'.rstrip() for line in comments.pop((), [])]
    stack = []
    for line in text.splitlines():
        match = _KEY_LINE.match(line)
        if match is None:
            out.append(line)
            continue
        indent, key, value = match.groups()
        depth = len(indent) // 2
        stack[depth:] = [key]
        if depth == 0 and value is None and out:
            out.append('')
        comment = comments.pop(tuple(stack), None)
        if isinstance(comment, (list, tuple)):
            out += [f'{indent}# {c}'.rstrip() for c in comment]
        elif comment:
            line = f'{line}  # {comment}'
        out.append(line)
    if comments:
        raise ValueError(f'to_yaml: comments for keys that are not in the options: {sorted(comments)}')
    return '\n'.join(out) + '\n'


def write_options(opt, path, comments=None):
    """Dump ``opt`` as YAML (:func:`to_yaml`) to ``path`` atomically (a temporary name, then rename); returns
    ``path``."""
    return write_text(path, to_yaml(opt, comments))
