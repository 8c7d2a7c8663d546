"""Checks of a whole run's options (train or test), before anything is built or written.

``pdnsr/train.py`` and ``pdnsr/test.py`` call :func:`preflight` before basicsr's pipeline, so that a typo fails the
run in a second with one line, before basicsr creates (or renames: ``experiments/<name>_archived_<time>``) any
folder; ``PDNModel`` calls :func:`check_run_options` again for runs built from Python. Nothing here may use basicsr's
logger: its first use configures the logger, and basicsr's pipeline would then never open its log file.
"""

import copy
import os
import sys

import torch
from basicsr.utils.registry import DATASET_REGISTRY

from pdnsr import provenance
from pdnsr.archs.dcm_arch import type_takes_prompt
from pdnsr.archs.network_options import build_network, check_network_options
from pdnsr.checkpoints import adapt_dcm_layout, fit_state_dict, read_checkpoint, state_dict_of
from pdnsr.data.image_files import image_size
from pdnsr.data.prompt_store import PromptStore
from pdnsr.errors import one_line
from pdnsr.models.temperature import TemperatureSchedule
from pdnsr.models.train_options import NonFiniteGuard, SpeedOptions, unknown_train_keys
from pdnsr.options import parse_options
from pdnsr.paths import root_path


def check_run_options(opt, warn=None):
    """Raise ValueError (one line naming the option) for anything in ``opt`` that would fail the run later.

    Checks the network section (type, arguments, DCM options and their types), ``num_gpu``, the ``train:`` section
    (temperature, amp, channels_last, compile, accumulate; unknown keys go to ``warn``), every dataset's folders and
    prompt store (size ``prompt_dim``; all stores of one embedding space), and ``path.pretrain_network_g``.

    Returns:
        dict | None: the encoder record (:func:`pdnsr.provenance.encoder_record`) of the run's prompt stores, the
        training store's when there is one; None for a network without prompts.
    """
    check_network_options(opt['network_g'])
    if not isinstance(opt.get('force_encoder', False), bool):
        raise ValueError(f'force_encoder must be true or false, got {opt["force_encoder"]!r}')
    if opt.get('num_gpu') and opt['num_gpu'] != 'auto' and not torch.cuda.is_available():
        raise ValueError(
            f'num_gpu: {opt["num_gpu"]} but this machine has no CUDA device; set num_gpu: 0 (CPU) or num_gpu: auto'
        )
    datasets = opt.get('datasets') or {}
    if opt.get('is_train', True) and opt.get('train') is not None:
        train_opt = opt['train']
        SpeedOptions.from_opt(train_opt, (datasets.get('train') or {}).get('batch_size_per_gpu'))
        TemperatureSchedule.from_opt(train_opt.get('temperature'))
        NonFiniteGuard(train_opt, 'cpu', '')  # its option's check
        unknown = unknown_train_keys(train_opt)
        if unknown and warn is not None:
            warn(f'train: unknown option(s) {unknown} are ignored (a typo?)')
    pretrain = (opt.get('path') or {}).get('pretrain_network_g')
    if pretrain and not os.path.isfile(os.path.expanduser(pretrain)):
        raise ValueError(f'path.pretrain_network_g: {pretrain} does not exist')

    prompt_dim = opt['network_g'].get('prompt_dim', 512) if type_takes_prompt(opt['network_g']['type']) else None
    records = {}
    for phase, dataset_opt in datasets.items():
        for key in ('dataroot_gt', 'dataroot_lq'):
            path = dataset_opt.get(key)
            if path and not os.path.exists(os.path.expanduser(path)):
                raise ValueError(f'datasets.{phase}.{key}: {path} does not exist')
        if prompt_dim is None:
            continue
        path = dataset_opt.get('dataroot_prompt')
        if not path:
            raise ValueError(
                f'datasets.{phase}: network_g type {opt["network_g"]["type"]} takes prompts but this dataset has no '
                f'dataroot_prompt; use type: PromptPairedImageDataset with dataroot_prompt: path/to/prompts.lmdb '
                f'(build one with scripts/make_prompt_lmdb.py)'
            )
        try:
            store = PromptStore(path)
            if store.dim != prompt_dim:
                raise ValueError(
                    f'{path} holds prompt embeddings of size {store.dim} but network_g.prompt_dim is {prompt_dim}; '
                    f'build the store with a CLIP model of size {prompt_dim} or set prompt_dim: {store.dim}'
                )
            records[phase] = provenance.encoder_record(store.meta)
            store.close()
        except (OSError, ValueError) as err:
            raise type(err)(f'datasets.{phase}.dataroot_prompt: {err}') from None
    if not records:
        return None
    first = _main_phase(records)
    for phase, record in records.items():
        if not provenance.same_space(records[first], record):
            raise ValueError(
                f'datasets.{phase}.dataroot_prompt holds prompts of {provenance.describe(record)} but '
                f'datasets.{first}.dataroot_prompt of {provenance.describe(records[first])}: one model needs prompts '
                f'from one encoder; rebuild one of the stores'
            )
    return records[first]


def _main_phase(phases):
    """The dataset whose prompt store names the run's embedding space: ``train`` if there is one, else the first."""
    return 'train' if 'train' in phases else next(iter(phases))


def check_pretrained_encoder(record, stores_record, opt, load_path, warn=None):
    """The prompt encoder a checkpoint records (``record``: its ``'pdnsr'`` entry, or None) against the run's prompt
    stores (``stores_record``, :func:`check_run_options`): refused when they differ unless ``force_encoder: true``.

    Args:
        warn (callable | None): where the warning of a forced mismatch, and of prompts of another kind or view than
            training's, go (None: nowhere; :func:`preflight` only refuses, PDNModel warns once when it loads).

    Raises:
        UserError: one line naming the checkpoint, the store and both encoders.
    """
    if record is None or stores_record is None:
        return
    stores = {p: d['dataroot_prompt'] for p, d in (opt.get('datasets') or {}).items() if d.get('dataroot_prompt')}
    phase = _main_phase(stores)
    provenance.check_same_space(
        record.get('prompt_encoder'),
        stores_record,
        load_path,
        f'datasets.{phase}.dataroot_prompt {stores[phase]}',
        force=opt.get('force_encoder', False),
        warn=warn,
        override='force_encoder: true in the option file',
    )


def check_pretrained_network(opt, net, stores_record):
    """``path.pretrain_network_g`` read and fitted to ``net`` as PDNModel will load it (strict: every key and shape;
    ``strict_load_g: false``: the DCM bank and router), and its prompt encoder checked against the run's stores.

    Raises:
        ValueError / UserError: one line naming the file and what to set (``dcm: {bank: compact}``, ``dcm: {router:
            paper}``, the option file the model was trained with, ``force_encoder: true``).
    """
    path_opt = opt.get('path') or {}
    load_path = path_opt.get('pretrain_network_g')
    if not load_path:
        return
    load_path = os.path.expanduser(load_path)
    checkpoint = read_checkpoint(load_path, 'path.pretrain_network_g')
    state, used = state_dict_of(checkpoint, load_path, path_opt.get('param_key_g', 'params'))
    if path_opt.get('strict_load_g', True):
        fit_state_dict(net, state, load_path, used)
    else:
        adapt_dcm_layout(net, state, load_path)
    check_pretrained_encoder(provenance.of_checkpoint(checkpoint), stores_record, opt, load_path)


def network_scale(opt_net):
    """The upscale factor a ``network_g`` section asks for (``upscale``, or RRDBNet's ``scale``; a ``PromptGuided``
    section's ``base``), or None when it names none."""
    for section in (opt_net, opt_net.get('base') if isinstance(opt_net.get('base'), dict) else {}):
        for key in ('upscale', 'scale'):
            if isinstance(section.get(key), int):
                return section[key]
    return None


def _pair_sizes(dataset, dataset_opt):
    """((h, w) of the GT, (h, w) of the LQ, GT path, LQ path) of a paired dataset's first pair, from the file headers
    (disk) or the ``meta_info.txt`` of basicsr's LMDBs; None when neither tells."""
    paths = getattr(dataset, 'paths', None)
    if not paths:
        return None
    gt, lq = paths[0]['gt_path'], paths[0]['lq_path']
    if (dataset_opt.get('io_backend') or {}).get('type') != 'lmdb':
        sizes = image_size(gt), image_size(lq)
        return None if None in sizes else (*sizes, gt, lq)
    sizes = []
    for root, key in ((dataset_opt['dataroot_gt'], gt), (dataset_opt['dataroot_lq'], lq)):
        try:
            with open(os.path.join(root, 'meta_info.txt')) as f:
                found = [line.split() for line in f if line.split('.')[0] == key]
            h, w = found[0][1].strip('()').split(',')[:2]
            sizes.append((int(h), int(w)))
        except (OSError, IndexError, ValueError):
            return None
    return (*sizes, f'{dataset_opt["dataroot_gt"]}[{gt}]', f'{dataset_opt["dataroot_lq"]}[{lq}]')


def check_datasets(opt):
    """Every dataset built once as basicsr will build it (its folders paired; a prompt store verified and every
    image's prompt key found, :class:`~pdnsr.data.PromptPairedImageDataset`), the run's ``scale`` against the
    network's, and the first pair's GT size against ``scale`` times its LQ size.

    Raises:
        ValueError: naming the dataset option, the file or key, the sizes and the scale.
    """
    scale, net_scale = opt.get('scale'), network_scale(opt['network_g'])
    if net_scale is not None and scale is not None and net_scale != scale:
        raise ValueError(
            f'network_g makes x{net_scale} images but the option file says scale: {scale}; set both to the scale of '
            'the data'
        )
    for phase, dataset_opt in (opt.get('datasets') or {}).items():
        try:
            dataset = DATASET_REGISTRY.get(dataset_opt.get('type'))(copy.deepcopy(dataset_opt))
        except AssertionError as err:  # basicsr asserts that the folders pair up
            raise ValueError(f'datasets.{phase}: {" ".join(str(err).split())}') from None
        except (OSError, ValueError, KeyError) as err:
            raise type(err)(f'datasets.{phase}: {one_line(err)}') from None
        sizes = _pair_sizes(dataset, dataset_opt)
        if sizes is not None and scale is not None:
            (gh, gw), (lh, lw), gt, lq = sizes
            if (gh, gw) != (lh * scale, lw * scale):
                raise ValueError(
                    f'datasets.{phase}: {gt} is {gh}x{gw} but {lq} is {lh}x{lw}, not 1/{scale} of it (scale: {scale}); '
                    'use the LR images of this scale or set scale to theirs'
                )


def preflight(kind, argv=None):
    """Every check of ``pdnsr/<kind>.py``'s run, on the options basicsr will run (:func:`pdnsr.options.parse_options`
    on the command line ``argv``, default this process's, without its side effects), before basicsr touches a
    folder: the options (:func:`check_run_options`), the network built once on the CPU after its size was checked
    against the memory
    (:func:`~pdnsr.archs.network_options.build_network`), the datasets (:func:`check_datasets`) and
    ``path.pretrain_network_g`` fitted to the network (:func:`check_pretrained_network`).

    Returns:
        dict: the options.
    """
    opt, args = parse_options(root_path(), kind == 'train', effects=False, argv=argv)
    for key in ('name', 'network_g'):
        if not opt.get(key):
            raise ValueError(f'-opt {args.opt}: no {key} (a basicsr option file has name:, network_g:, datasets:)')
    stores_record = check_run_options(
        opt, warn=lambda message: print(f'pdnsr-{kind}: warning: {message}', file=sys.stderr)
    )
    net = build_network(opt['network_g'], copies=4 if kind == 'train' else 1)
    check_datasets(opt)
    check_pretrained_network(opt, net, stores_record)
    return opt
