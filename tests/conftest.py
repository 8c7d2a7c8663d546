"""Shared test set-up. ``import pdnsr`` first: it makes basicsr 1.4.2 importable on current torchvision."""
from pathlib import Path

import pdnsr  # noqa: F401
import pytest
import torch

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
