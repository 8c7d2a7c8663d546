"""Shared test set-up. ``import pdnsr`` first: it makes basicsr 1.4.2 importable on current torchvision."""

from pathlib import Path

import pytest
import torch

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
