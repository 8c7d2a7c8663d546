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
            records[phase] = provenance.encoder_record(store.meta)
            store.close()
        except (OSError, ValueError) as err:
            raise type(err)(f'datasets.{phase}.dataroot_prompt: {err}') from None
    if not records:
        return None
    first = 'train' if 'train' in records else next(iter(records))
    for phase, record in records.items():
        if not provenance.same_space(records[first], record):
            raise ValueError(
                f'datasets.{phase}.dataroot_prompt holds prompts of {provenance.describe(record)} but '
                f'datasets.{first}.dataroot_prompt of {provenance.describe(records[first])}: one model needs prompts '
                f'from one encoder; rebuild one of the stores'
            )
    return records[first]


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
    on the CPU (its constructor's own checks); raises before basicsr touches a folder."""
    from basicsr.utils.registry import ARCH_REGISTRY

    opt = read_options(sys.argv[1:] if argv is None else argv, kind == 'train')
    check_run_options(opt, warn=lambda message: print(f'pdnsr-{kind}: warning: {message}', file=sys.stderr))
    try:
        args = {k: v for k, v in opt['network_g'].items() if k != 'type'}
        ARCH_REGISTRY.get(opt['network_g']['type'])(**args)  # not basicsr's build_network: it logs
    except (TypeError, ValueError) as err:
        raise ValueError(f'network_g: {" ".join(str(err).split())}') from None
