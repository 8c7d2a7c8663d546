"""Checks of a whole run's options (train or test), before anything is built or written.

``pdnsr/train.py`` and ``pdnsr/test.py`` call :func:`preflight` before basicsr's pipeline, so that a typo fails the
run in a second with one line, before basicsr creates (or renames: ``experiments/<name>_archived_<time>``) any
folder; ``PDNModel`` calls :func:`check_run_options` again for runs built from Python. Nothing here may use basicsr's
logger: its first use configures the logger, and basicsr's pipeline would then never open its log file.
"""

import argparse
import os
import sys

import torch
import yaml
from basicsr.utils.options import _postprocess_yml_value, ordered_yaml

from pdnsr import provenance
from pdnsr.archs.dcm_arch import type_takes_prompt
from pdnsr.archs.network_options import check_network_options
from pdnsr.checkpoints import adapt_dcm_layout, fit_state_dict, read_checkpoint, state_dict_of
from pdnsr.data.prompt_store import PromptStore
from pdnsr.models.temperature import TemperatureSchedule
from pdnsr.models.train_options import SpeedOptions, unknown_train_keys


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
            store.verify()  # every value's length now, not in a DataLoader worker after basicsr made its folders
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


def read_options(argv, is_train):
    """The option dict ``pdnsr/train.py`` / ``pdnsr/test.py`` will run, as basicsr's ``parse_options`` makes it
    (``-opt`` file, ``--force_yml`` updates, dataset phases and scale), without its side effects."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt', required=True)
    parser.add_argument('--force_yml', nargs='+', default=None)
    args, _ = parser.parse_known_args(argv)
    if not os.path.isfile(args.opt):
        raise FileNotFoundError(f'-opt {args.opt}: no such option file')
    with open(args.opt, encoding='utf-8') as f:
        try:
            opt = yaml.load(f, Loader=ordered_yaml()[0])
        except yaml.YAMLError as err:
            raise ValueError(f'-opt {args.opt} is not valid YAML: {err}') from None
    if not isinstance(opt, dict) or not isinstance(opt.get('network_g'), dict):
        raise ValueError(f'-opt {args.opt}: no network_g section (a basicsr option file has one)')
    for entry in args.force_yml or []:
        keys, _, value = entry.partition('=')
        target = opt
        *parents, last = keys.strip().split(':')
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = _postprocess_yml_value(value.strip())
    opt['is_train'] = is_train
    for phase, dataset_opt in (opt.get('datasets') or {}).items():
        dataset_opt['phase'] = phase.split('_')[0]
        if 'scale' in opt:
            dataset_opt['scale'] = opt['scale']
    return opt


def preflight(kind, argv=None):
    """The checks of :func:`check_run_options` on the options of ``pdnsr/<kind>.py``, plus building the network once
    on the CPU (its constructor's own checks) and fitting ``path.pretrain_network_g`` to it
    (:func:`check_pretrained_network`); raises before basicsr touches a folder."""
    from basicsr.utils.registry import ARCH_REGISTRY

    opt = read_options(sys.argv[1:] if argv is None else argv, kind == 'train')
    stores_record = check_run_options(
        opt, warn=lambda message: print(f'pdnsr-{kind}: warning: {message}', file=sys.stderr)
    )
    try:
        args = {k: v for k, v in opt['network_g'].items() if k != 'type'}
        net = ARCH_REGISTRY.get(opt['network_g']['type'])(**args)  # not basicsr's build_network: it logs
    except (TypeError, ValueError) as err:
        raise ValueError(f'network_g: {" ".join(str(err).split())}') from None
    check_pretrained_network(opt, net, stores_record)
