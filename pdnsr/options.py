"""One builder of basicsr option dicts: the generator of ``options/``, the demo, the benchmarks and the tests.

Each function returns a plain dict in basicsr's option layout; callers change what differs and dump it with
:func:`write_options` (atomic; optional comments, see :func:`to_yaml`). A prompt-guided network type (one that
takes ``prompt_dim``, see :func:`pdnsr.archs.type_takes_prompt`) gets ``PromptPairedImageDataset`` datasets with
``dataroot_prompt`` from the caller; a baseline gets basicsr's ``PairedImageDataset`` from the same arguments, so a
baseline and its "+" twin share one recipe.
"""

import re

import yaml

from pdnsr.archs.dcm_arch import type_takes_prompt
from pdnsr.archs.network_options import network_parameters
from pdnsr.archs.plus_util import DCM_OPTIONS
from pdnsr.utils.files import write_text


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
