"""Data preparation: the paper's degradation and the COCO / faces / benchmark scripts, on tiny real files."""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

# isort: off
import pdnsr  # noqa: F401  (compat shim before basicsr)
from basicsr.data.transforms import mod_crop
from basicsr.utils.matlab_functions import imresize
# isort: on

from pdnsr.data.degradations import blur_downsample

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / 'shared' / 'data'
if str(REPO_ROOT) not in sys.path:  # the scripts live outside the installed package
    sys.path.insert(0, str(REPO_ROOT))

from scripts.data_preparation import prepare_benchmark, prepare_coco, prepare_faces  # noqa: E402

HAS_PROMPTS = importlib.util.find_spec('pdnsr.prompts.build') is not None
needs_shared = pytest.mark.skipif(
    not (SHARED_DATA / 'benchmarks' / 'Set5').is_dir(), reason=f'shared test data not found at {SHARED_DATA}'
)
needs_prompts = pytest.mark.skipif(not HAS_PROMPTS, reason='pdnsr.prompts.build (prompt store builder) not present')


def synthetic_image(h, w, seed):
    """Smooth colour gradient plus noise, uint8 BGR (compresses fast, has detail for the blur to act on)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, (xx + yy) / (h + w)], axis=2) * 200
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def mtimes(folder):
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(Path(folder).rglob('*')) if p.is_file()}


# ---------------------------------------------------------------- degradation


def hand_degradation(img, scale, sigma):
    """The documented recipe written out directly: 2-D Gaussian, symmetric padding, sum over taps, imresize."""
    radius = math.ceil(3 * sigma)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(img.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), mode='symmetric')
    h, w = img.shape[:2]
    blurred = np.zeros(img.shape, dtype=np.float64)
    for i in range(2 * radius + 1):
        for j in range(2 * radius + 1):
            blurred += kernel[i, j] * padded[i : i + h, j : j + w]
    return np.clip(imresize(blurred.astype(np.float32), 1 / scale), 0, 1)


def test_blur_downsample_matches_hand_computation():
    img = synthetic_image(48, 40, seed=0).astype(np.float32) / 255
    for scale, sigma in ((4, 1.3), (2, 0.8)):
        out = blur_downsample(img, scale, sigma)
        assert out.dtype == np.float32 and out.shape == (48 // scale, 40 // scale, 3)
        np.testing.assert_allclose(out, hand_degradation(img, scale, sigma), atol=2e-6)


def test_blur_downsample_dtypes_and_plain_bicubic():
    img8 = synthetic_image(32, 24, seed=1)
    img32 = img8.astype(np.float32) / 255
    out8 = blur_downsample(img8, 4)
    assert out8.dtype == np.uint8 and out8.shape == (8, 6, 3)
    # uint8 path == rounded float path: the round trip adds no error of its own.
    np.testing.assert_array_equal(out8, np.round(blur_downsample(img32, 4) * 255).astype(np.uint8))
    plain = np.clip(imresize(img32, 1 / 4), 0, 1)
    np.testing.assert_array_equal(blur_downsample(img32, 4, sigma=0), plain)
    np.testing.assert_array_equal(blur_downsample(img32, 4, sigma=None), plain)
    assert blur_downsample(img8[:, :, 0], 2).shape == (16, 12)  # greyscale (H, W) works too
    with pytest.raises(ValueError, match='mod_crop'):
        blur_downsample(img8[:30], 4)
    with pytest.raises(ValueError, match='scale'):
        blur_downsample(img8, 0)


# ---------------------------------------------------------------- benchmark script


@needs_shared
def test_prepare_benchmark(tmp_path, capsys):
    src = tmp_path / 'in'
    src.mkdir()
    for name in ('Set5/head.png', 'Set5/woman.png', 'Set14/bridge.png'):  # 280x280, 344x228, grey 512x512
        shutil.copy(SHARED_DATA / 'benchmarks' / name, src)
    out = tmp_path / 'out'
    assert prepare_benchmark.main([str(src), str(out), '--scale', '3', '--workers', '2']) == 0
    assert 'bridge' in capsys.readouterr().out  # the greyscale conversion is reported

    for name in ('head', 'woman', 'bridge'):
        orig = cv2.imread(str(src / f'{name}.png'), cv2.IMREAD_UNCHANGED)
        hr = cv2.imread(str(out / 'HR' / f'{name}.png'), cv2.IMREAD_UNCHANGED)
        lr = cv2.imread(str(out / 'LRx3' / f'{name}.png'), cv2.IMREAD_UNCHANGED)
        assert hr.shape == (orig.shape[0] // 3 * 3, orig.shape[1] // 3 * 3, 3)
        assert lr.shape == (hr.shape[0] // 3, hr.shape[1] // 3, 3)
        if orig.ndim == 2:
            orig = np.repeat(orig[:, :, None], 3, axis=2)
        np.testing.assert_array_equal(hr, mod_crop(orig, 3))
        np.testing.assert_array_equal(lr, blur_downsample(hr, 3, 1.3))

    # Rerun: nothing rewritten. Changed options: refused in one line with exit code 2.
    before = mtimes(out)
    assert prepare_benchmark.main([str(src), str(out), '--scale', '3', '--workers', '1']) == 0
    assert mtimes(out) == before
    capsys.readouterr()
    assert prepare_benchmark.main([str(src), str(out), '--scale', '3', '--sigma', '0']) == 2
    err = capsys.readouterr().err.strip()
    assert 'sigma' in err and '--overwrite' in err and len(err.splitlines()) == 1
    assert prepare_benchmark.main([str(src), str(out), '--scale', '3', '--sigma', '0', '--overwrite']) == 0
    hr = cv2.imread(str(out / 'HR' / 'head.png'))
    np.testing.assert_array_equal(cv2.imread(str(out / 'LRx3' / 'head.png')), blur_downsample(hr, 3, 0))


@pytest.mark.slow
def test_prepare_benchmark_cli_user_error(tmp_path):
    script = REPO_ROOT / 'scripts' / 'data_preparation' / 'prepare_benchmark.py'
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / 'missing'), str(tmp_path / 'out')],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f'prepare_benchmark.py: error: input folder not found: {tmp_path}/missing'), line


# ---------------------------------------------------------------- COCO script


def make_tiny_coco(root):
    """Three images (640x480 jpg, 400x520 png, 400x300 png below 512 px) and a COCO captions file."""
    images = root / 'train2017'
    images.mkdir(parents=True)
    sizes = {'000000000009': (480, 640, '.jpg'), '000000000025': (520, 400, '.png'), '000000000030': (300, 400, '.png')}
    coco = {'images': [], 'annotations': []}
    for i, (key, (h, w, ext)) in enumerate(sizes.items()):
        cv2.imwrite(str(images / f'{key}{ext}'), synthetic_image(h, w, seed=i))
        coco['images'].append({'id': int(key), 'file_name': f'{key}.jpg', 'height': h, 'width': w})
        for j in range(2):
            coco['annotations'].append({'id': 10 * i + j, 'image_id': int(key), 'caption': f'picture {key} no {j}'})
    captions = root / 'captions_train2017.json'
    captions.write_text(json.dumps(coco))
    return images, captions


def test_prepare_coco(tmp_path):
    images, captions = make_tiny_coco(tmp_path)
    out = tmp_path / 'coco'
    argv = ['--images', str(images), '--captions', str(captions), '--output', str(out), '--workers', '2', '--lmdb']
    assert prepare_coco.main(argv) == 0

    # 640x480: rows {0, 160} x cols {0, 320}; 520x400: rows {0, 200} x cols {0, 80}; 400x300 dropped (< 512).
    expected = [f'{k}_s{i:03d}.png' for k in ('000000000009', '000000000025') for i in range(1, 5)]
    assert sorted(os.listdir(out / 'GT')) == expected
    for scale in (2, 4, 8):
        assert sorted(os.listdir(out / f'LRx{scale}')) == expected
        lr = cv2.imread(str(out / f'LRx{scale}' / expected[0]))
        assert lr.shape == (320 // scale, 320 // scale, 3)
    src = cv2.imread(str(images / '000000000025.png'))
    np.testing.assert_array_equal(cv2.imread(str(out / 'GT' / '000000000025_s004.png')), src[200:520, 80:400])
    gt = cv2.imread(str(out / 'GT' / expected[0]))
    np.testing.assert_array_equal(cv2.imread(str(out / 'LRx4' / expected[0])), blur_downsample(gt, 4, 1.3))

    meta = (out / 'GT.lmdb' / 'meta_info.txt').read_text().split('\n')
    assert meta[0] == '000000000009_s001.png (320,320,3) 1'
    before = mtimes(out)
    assert prepare_coco.main(argv) == 0  # idempotent: images and LMDBs kept as they are
    assert mtimes(out) == before


@needs_prompts
def test_prepare_coco_text_prompts_feed_the_dataset(tmp_path):
    from pdnsr.data.prompt_paired_image_dataset import PromptPairedImageDataset
    from pdnsr.data.prompt_store import PromptStore

    images, captions = make_tiny_coco(tmp_path)
    out = tmp_path / 'coco'
    argv = ['--images', str(images), '--captions', str(captions), '--output', str(out), '--crop-size', '160']
    argv += ['--workers', '1', '--lmdb', '--prompts', '--clip-pretrained', 'none']
    assert prepare_coco.main(argv) == 0
    store = PromptStore(str(out / 'prompts_text.lmdb'))
    # keyed by parent image (2 captions each); the dropped image is not in the store
    assert sorted(store.keys()) == ['000000000009', '000000000025']
    assert store.get('000000000009').shape == (2, 512)
    store.close()

    # The prepared folders and LMDBs load as they are into the dataset, crops finding their parent's prompt.
    for backend, suffix in (('disk', ''), ('lmdb', '.lmdb')):
        opt = {
            'name': 'coco',
            'type': 'PromptPairedImageDataset',
            'phase': 'val',
            'scale': 4,
            'dataroot_gt': str(out / f'GT{suffix}'),
            'dataroot_lq': str(out / f'LRx4{suffix}'),
            'dataroot_prompt': str(out / 'prompts_text.lmdb'),
            'io_backend': {'type': backend},
        }
        dataset = PromptPairedImageDataset(opt)
        assert len(dataset) == 12 + 12  # 480x640: 3x4 crops of 160; 520x400: 4x3 (edge-flush crops at 360, 240)
        sample = dataset[0]
        crop_key = os.path.splitext(os.path.basename(sample['gt_path']))[0]  # disk order is os.scandir's
        assert sample['prompt_key'] == crop_key.rsplit('_s', 1)[0]
        assert sample['gt'].shape == (3, 160, 160) and sample['lq'].shape == (3, 40, 40)
        assert sample['prompt'].shape == (512,)
        dataset.prompt_store.close()  # py-lmdb refuses a second open of the same store in one process

    before = mtimes(out)
    assert prepare_coco.main(argv) == 0  # the complete store is kept, without loading the encoder
    assert mtimes(out) == before


# ---------------------------------------------------------------- faces script


def test_prepare_faces(tmp_path, capsys):
    src = tmp_path / 'faces'
    src.mkdir()
    cv2.imwrite(str(src / '00000.png'), synthetic_image(300, 256, seed=3))  # not square: centre crop, resize
    cv2.imwrite(str(src / '00001.png'), synthetic_image(128, 128, seed=4))  # already HR size
    cv2.imwrite(str(src / '00002.png'), synthetic_image(100, 100, seed=5))  # too small: dropped
    out = tmp_path / 'out'
    assert prepare_faces.main([str(src), str(out), '--hr-size', '128', '--workers', '1']) == 0
    assert '1 dropped' in capsys.readouterr().out
    assert sorted(os.listdir(out / 'HR')) == ['00000.png', '00001.png']
    for scale, side in ((8, 16), (16, 8)):
        assert sorted(os.listdir(out / f'LRx{scale}')) == ['00000.png', '00001.png']
        assert cv2.imread(str(out / f'LRx{scale}' / '00000.png')).shape == (side, side, 3)
    assert cv2.imread(str(out / 'HR' / '00000.png')).shape == (128, 128, 3)
    np.testing.assert_array_equal(cv2.imread(str(out / 'HR' / '00001.png')), cv2.imread(str(src / '00001.png')))
    assert prepare_faces.main([str(src), str(out), '--hr-size', '100']) == 2  # 100 is not a multiple of 8


# ---------------------------------------------------------------- prompts through the scripts


@needs_shared
@needs_prompts
def test_prepare_benchmark_mixed_prompts(tmp_path, capsys):
    from pdnsr.data.prompt_store import PromptStore

    src = tmp_path / 'in'
    src.mkdir()
    for name in ('baby', 'bird'):
        shutil.copy(SHARED_DATA / 'benchmarks' / 'Set5' / f'{name}.png', src)
    out = tmp_path / 'out'
    argv = [str(src), str(out), '--scale', '4', '--workers', '1', '--prompts', 'image', '--clip-pretrained', 'none']
    argv += ['--captions', str(SHARED_DATA / 'benchmarks' / 'captions.json'), '--captions-subset', 'Set5']
    assert prepare_benchmark.main(argv) == 0
    store = PromptStore(str(out / 'prompts_mixed_x4.lmdb'))
    assert sorted(store.keys()) == ['baby', 'bird']
    assert store.meta['kind'] == 'mixed' and store.meta['view'] == 'flip'
    store.close()
    before = mtimes(out)
    assert prepare_benchmark.main(argv) == 0
    assert mtimes(out) == before
    capsys.readouterr()
    assert prepare_benchmark.main(argv + ['--view', 'identity']) == 2  # a store made another way is not reused
    assert 'view' in capsys.readouterr().err
