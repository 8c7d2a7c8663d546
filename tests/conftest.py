"""Shared test set-up. ``import pdnsr`` first: it makes basicsr 1.4.2 importable on current torchvision."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import pdnsr  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / 'shared' / 'data'

# Two threads everywhere: the CI machine has two cores and oversubscription makes the suite slower, not faster.
torch.set_num_threads(2)


@pytest.fixture(scope='session')
def shared_data():
    """``../shared/data`` beside the repository; tests that need it skip with the reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f'shared benchmark data not found at {SHARED_DATA} (only present on the project machines)')
    return SHARED_DATA


@pytest.fixture(scope='session')
def clip_encoder():
    """The real open_clip ViT-B-32 architecture with random weights (pretrained='none'): no hub is reachable here,
    so tests never load published weights. Built once per session."""
    from pdnsr.prompts.encoder import PromptEncoder

    torch.manual_seed(0)
    return PromptEncoder('ViT-B-32', pretrained='none')


@pytest.fixture(scope='session')
def paired_data(tmp_path_factory, clip_encoder):
    """Six 96x96 crops of scikit-image's photos as HR/LRx2 PNGs, with image and text prompt stores built by the
    real builder from the random-weight CLIP. Returns a dict of paths."""
    from pdnsr.prompts.build import build_prompt_store
    from pdnsr.utils.sample_data import SAMPLE_CAPTIONS, sample_photos, write_pairs

    root = tmp_path_factory.mktemp('paired')
    photos = dict(list(sample_photos().items())[:6])
    hr, lr = write_pairs(photos, str(root), scale=2, crop=96)
    image_store = str(root / 'prompts_image.lmdb')
    text_store = str(root / 'prompts_text.lmdb')
    build_prompt_store('image', image_store, clip_encoder, images_dir=lr, progress=False)
    build_prompt_store(
        'text', text_store, clip_encoder, captions={k: SAMPLE_CAPTIONS[k] for k in photos}, progress=False
    )
    return {
        'root': str(root),
        'hr': hr,
        'lr': lr,
        'image_store': image_store,
        'text_store': text_store,
        'keys': sorted(photos),
    }


def torchrun_weights(opt, tmp_path, port, nproc=2):
    """Train ``opt`` through basicsr's pipeline in ``nproc`` gloo processes (``torchrun``); every rank dumps its
    final weights (``tests/ddp_train_and_dump.py``). Returns the list of state dicts, rank 0 first."""
    opt = dict(opt, model_type='WeightDumpingPDNModel')
    opt['val'] = dict(opt.get('val') or {}, val_freq=1000)
    opt_path = tmp_path / 'ddp.yml'
    opt_path.write_text(yaml.safe_dump(opt))
    env = dict(os.environ, PDNSR_ROOT=str(tmp_path), OMP_NUM_THREADS='1', DUMP_DIR=str(tmp_path))
    script = REPO_ROOT / 'tests' / 'ddp_train_and_dump.py'
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}', f'--master_port={port}']
        + [str(script), '-opt', str(opt_path), '--launcher', 'pytorch'],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [torch.load(tmp_path / f'weights_rank{r}.pth') for r in range(nproc)]
