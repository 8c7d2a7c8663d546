"""Shared test set-up. ``import pdnsr`` first: it makes basicsr 1.4.2 importable on current torchvision."""

import os
from pathlib import Path

import pytest
import torch

import pdnsr  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]
# The project machines' small data sets (Set5, Set14, BSD68, Sun-Hays80); a user's clone has none. PDNSR_SHARED_DATA
# points elsewhere (tests/test_any_clone.py hides it to check that every test needing it skips with the reason).
SHARED_DATA = Path(os.environ.get('PDNSR_SHARED_DATA') or REPO_ROOT.parent / 'shared' / 'data')

# Two threads everywhere: the CI machine has two cores and oversubscription makes the suite slower, not faster.
torch.set_num_threads(2)


def pytest_collection_modifyitems(items):
    """Mark ``shared`` every test that reads the shared data (its ``shared_data`` fixture, or a ``shared`` mark of
    its own): ``pytest -m shared`` selects them (tests/test_any_clone.py)."""
    for item in items:
        if 'shared_data' in getattr(item, 'fixturenames', ()):
            item.add_marker(pytest.mark.shared)


@pytest.fixture(scope='session')
def shared_data():
    """``../shared/data`` beside the repository; tests that need it skip with the reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f'shared benchmark data not found at {SHARED_DATA} (only on the project machines)')
    return SHARED_DATA


@pytest.fixture(scope='session')
def clip_encoder():
    """The real open_clip ViT-B-32 architecture with random weights (pretrained='none'): no hub is reachable here,
    so tests never load published weights. Built once per session: it is the one that pdnsr-infer and the scripts
    get for --clip-pretrained none in this process (:func:`pdnsr.inference.cached_prompt_encoder`, seed 0)."""
    from pdnsr.inference import cached_prompt_encoder

    torch.manual_seed(0)  # as before the cache: the global RNG state later tests start from
    return cached_prompt_encoder('ViT-B-32', 'none')


@pytest.fixture(scope='session')
def paired_data(tmp_path_factory, clip_encoder):
    """Six 96x96 crops of scikit-image's photos as HR/LRx2 PNGs, with image and text prompt stores built by the
    real builder from the random-weight CLIP. Returns a dict of paths."""
    from pdnsr.prompts.build import build_prompt_store
    from pdnsr.tools.sample_data import SAMPLE_CAPTIONS, sample_dataset

    root = tmp_path_factory.mktemp('paired')
    hr, lr, image_store = sample_dataset(root, clip_encoder, scale=2, crop=96, count=6)
    keys = sorted(os.path.splitext(name)[0] for name in os.listdir(hr))
    text_store = str(root / 'prompts_text.lmdb')
    build_prompt_store('text', text_store, clip_encoder, captions={k: SAMPLE_CAPTIONS[k] for k in keys}, progress=False)
    return {
        'root': str(root),
        'hr': hr,
        'lr': lr,
        'image_store': image_store,
        'text_store': text_store,
        'keys': keys,
    }


def load_script(name, folder='scripts'):
    """``<folder>/<name>.py`` loaded as a module, its folder on ``sys.path`` (the scripts import their folder's
    ``_checkout`` helper, the benchmarks ``common``)."""
    import importlib.util
    import sys

    if str(REPO_ROOT / folder) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT / folder))
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / folder / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
