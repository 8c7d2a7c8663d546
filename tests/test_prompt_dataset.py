"""PromptPairedImageDataset on real HR/LR PNGs (LR by basicsr's MATLAB-style imresize) and a real prompt LMDB.

The prompt values are synthetic unit vectors written with PromptStoreWriter: what matters here is which row each
sample gets, so no CLIP model is needed (the encoder and builder are tested in their own modules). conftest.py
imports pdnsr (which makes basicsr importable) before this module.
"""

import copy

import cv2
import lmdb
import numpy as np
import pytest
import torch
from basicsr.data import build_dataset
from basicsr.utils.lmdb_util import make_lmdb_from_imgs
from basicsr.utils.matlab_functions import imresize
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils.data import DataLoader

from pdnsr.data import PromptPairedImageDataset, PromptStoreWriter
from pdnsr.data.prompt_store import close_shared

D = 512
SCALE = 2
NAMES = ['0001', '0002_s001', '0002_s002', 'flower']


def _unit_rows(rng, m):
    x = rng.standard_normal((m, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """HR 24x24 / LR 12x12 PNG pairs and a prompt store keyed by parent image ('0002' serves both sub-images)."""
    root = tmp_path_factory.mktemp('paired')
    (root / 'HR').mkdir()
    (root / 'LR').mkdir()
    rng = np.random.default_rng(0)
    for name in NAMES:
        hr = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        lr = np.clip(np.round(imresize(hr.astype(np.float32) / 255.0, 1 / SCALE) * 255.0), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / 'HR' / f'{name}.png'), hr)
        cv2.imwrite(str(root / 'LR' / f'{name}.png'), lr)
    prompts = {'0001': _unit_rows(rng, 3), '0002': _unit_rows(rng, 5), 'flower': _unit_rows(rng, 1)}
    with PromptStoreWriter(str(root / 'prompts.lmdb'), {'encoder': 'test', 'kind': 'text'}, D) as writer:
        writer.write_batch(prompts.items())
    return root, prompts


def _index(dataset, name):
    """Index of an image (basicsr lists folders in os.scandir order, which is not sorted)."""
    return next(i for i, p in enumerate(dataset.paths) if p['gt_path'].endswith(f'{name}.png') or p['gt_path'] == name)


def _opt(root, phase='train', **extra):
    opt = {
        'name': 'toy',
        'type': 'PromptPairedImageDataset',
        'dataroot_gt': str(root / 'HR'),
        'dataroot_lq': str(root / 'LR'),
        'dataroot_prompt': str(root / 'prompts.lmdb'),
        'io_backend': {'type': 'disk'},
        'scale': SCALE,
        'phase': phase,
    }
    if phase == 'train':
        opt.update(gt_size=16, use_hflip=True, use_rot=True)
    opt.update(extra)
    return opt


def test_registered_and_built_from_options(data):
    root, _ = data
    assert DATASET_REGISTRY.get('PromptPairedImageDataset') is PromptPairedImageDataset
    dataset = build_dataset(_opt(root, prompt_dim=D))
    assert len(dataset) == len(NAMES)


def test_train_sample_crop_and_random_prompt(data):
    root, prompts = data
    opt = _opt(root)
    frozen = copy.deepcopy(opt)
    dataset = PromptPairedImageDataset(opt)
    seen = set()
    for _ in range(30):
        sample = dataset[_index(dataset, '0002_s002')]  # parent 0002 has 5 prompts
        assert sample['lq'].shape == (3, 8, 8) and sample['gt'].shape == (3, 16, 16)
        assert sample['prompt'].shape == (D,) and sample['prompt'].dtype == torch.float32
        assert sample['prompt_key'] == '0002' and sample['gt_path'].endswith('0002_s002.png')
        row = np.flatnonzero(np.all(prompts['0002'] == sample['prompt'].numpy(), axis=1))
        assert len(row) == 1
        seen.add(int(row[0]))
    assert len(seen) > 1  # 'random' is the train default
    assert opt == frozen  # basicsr pops io_backend['type'] from its own copy, not ours


def test_same_patches_as_the_baseline_dataset_with_the_same_seed(data):
    """The prompt draw must not consume basicsr's crop/flip randomness: a baseline and its "+" twin trained with
    one seed see the same patches."""
    import random

    root, _ = data
    plus = PromptPairedImageDataset(_opt(root))
    base = build_dataset(dict(_opt(root), type='PairedImageDataset'))
    for dataset in (plus, base):
        random.seed(7)
        dataset.samples = [dataset[i % len(dataset)]['gt'] for i in range(12)]
    for a, b in zip(plus.samples, base.samples):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_val_uses_first_prompt_and_full_image(data):
    root, prompts = data
    dataset = PromptPairedImageDataset(_opt(root, phase='val'))
    keys = {name: dataset[_index(dataset, name)]['prompt_key'] for name in NAMES}
    assert keys == {'0001': '0001', '0002_s001': '0002', '0002_s002': '0002', 'flower': 'flower'}
    sample = dataset[_index(dataset, '0001')]
    assert sample['lq'].shape == (3, 12, 12) and sample['gt'].shape == (3, 24, 24)
    np.testing.assert_array_equal(sample['prompt'].numpy(), prompts['0001'][0])


def test_mean_choice_is_normalised_mean(data):
    root, prompts = data
    dataset = PromptPairedImageDataset(_opt(root, phase='val', prompt_choice='mean'))
    mean = prompts['0001'].mean(axis=0)
    np.testing.assert_allclose(
        dataset[_index(dataset, '0001')]['prompt'].numpy(), mean / np.linalg.norm(mean), rtol=0, atol=1e-6
    )


def test_dataloader_with_two_workers(data):
    root, _ = data
    dataset = PromptPairedImageDataset(_opt(root))
    loader = DataLoader(dataset, batch_size=2, num_workers=2, shuffle=False)
    batches = list(loader)
    assert [b['prompt'].shape for b in batches] == [(2, D), (2, D)]
    assert [k for b in batches for k in b['prompt_key']] == dataset.prompt_keys
    assert torch.allclose(torch.cat([b['prompt'] for b in batches]).norm(dim=1), torch.ones(4))


def test_lmdb_image_backend_uses_keys(data, tmp_path):
    root, prompts = data
    for sub in ('HR', 'LR'):
        files = sorted(p.name for p in (root / sub).iterdir())
        # basicsr sizes the map from the first image (x10); explicit for images this small
        make_lmdb_from_imgs(
            str(root / sub), str(tmp_path / f'{sub}.lmdb'), files, [f[:-4] for f in files], map_size=1 << 22
        )
    opt = _opt(root, phase='val', io_backend={'type': 'lmdb'})
    opt.update(dataroot_gt=str(tmp_path / 'HR.lmdb'), dataroot_lq=str(tmp_path / 'LR.lmdb'))
    dataset = PromptPairedImageDataset(opt)
    sample = dataset[_index(dataset, 'flower')]
    assert sample['gt_path'] == 'flower' and sample['prompt_key'] == 'flower'
    np.testing.assert_array_equal(sample['prompt'].numpy(), prompts['flower'][0])


def test_configuration_errors(data):
    root, _ = data
    opt = _opt(root)
    del opt['dataroot_prompt']
    with pytest.raises(ValueError, match='dataroot_prompt'):
        PromptPairedImageDataset(opt)
    with pytest.raises(ValueError, match=r'd=512.*64 is expected'):
        PromptPairedImageDataset(_opt(root, prompt_dim=64))
    with pytest.raises(ValueError, match='prompt_choice'):
        PromptPairedImageDataset(_opt(root, prompt_choice='last'))
    with pytest.raises(ValueError, match=r"prompts\.lmdb has no prompt for 2 of 4 images.*'0002_s001', '0002_s002'"):
        PromptPairedImageDataset(_opt(root, prompt_key_pattern=None))


def test_corrupt_store_is_refused_when_the_dataset_opens_it(data, tmp_path):
    # Without the check at construction, the bad value would surface in a DataLoader worker mid-training.
    root, prompts = data
    store = tmp_path / 'prompts.lmdb'
    with PromptStoreWriter(str(store), {'encoder': 'test', 'kind': 'text'}, D) as writer:
        writer.write_batch(prompts.items())
    close_shared(str(store))
    env = lmdb.open(str(store))
    with env.begin(write=True) as txn:
        txn.put(b'flower', txn.get(b'flower')[:1000])
    env.close()
    with pytest.raises(ValueError, match=rf"{store}: value of key 'flower' has 1000 bytes.*4 \* d = {4 * D}.*rebuild"):
        PromptPairedImageDataset(_opt(root, dataroot_prompt=str(store)))
