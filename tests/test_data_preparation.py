"""Data preparation: the paper's degradation and the COCO / faces / benchmark commands, on tiny real files."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import commands
import cv2
import numpy as np
import pytest

# isort: off
import pdnsr  # noqa: F401  (compat shim before basicsr)
from basicsr.data.transforms import mod_crop
from basicsr.utils.matlab_functions import imresize
# isort: on

from conftest import REPO_ROOT, SHARED_DATA  # noqa: E402
from pdnsr.data.degradations import blur_downsample
from pdnsr.tools.prepare import cli
from pdnsr.tools.prepare.cli import script_main as prepare

needs_shared = pytest.mark.skipif(
    not (SHARED_DATA / 'benchmarks' / 'Set5').is_dir(), reason=f'shared test data not found at {SHARED_DATA}'
)


def synthetic_image(h, w, seed):
    """Smooth colour gradient plus noise, uint8 BGR (compresses fast, has detail for the blur to act on)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, (xx + yy) / (h + w)], axis=2) * 200
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def truncate(path, fraction):
    """Cut a file to ``fraction`` of its bytes, as an interrupted download or copy does."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * fraction)])


def files_under(folder):
    """Every file below ``folder`` (relative paths); [] when it does not exist."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob('*') if p.is_file())


def error_lines(err):
    """The lines of captured stderr that report an error (progress bars share stderr)."""
    return [line for line in err.splitlines() if ': error: ' in line]


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


# ---------------------------------------------------------------- benchmark command


@pytest.mark.shared
@needs_shared
def test_prepare_benchmark(tmp_path, capsys):
    src = tmp_path / 'in'
    src.mkdir()
    for name in ('Set5/head.png', 'Set5/woman.png', 'Set14/bridge.png'):  # 280x280, 344x228, grey 512x512
        shutil.copy(SHARED_DATA / 'benchmarks' / name, src)
    out = tmp_path / 'out'
    assert prepare('benchmark', [str(src), str(out), '--scale', '3', '--workers', '2']) == 0
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
    assert prepare('benchmark', [str(src), str(out), '--scale', '3', '--workers', '1']) == 0
    assert mtimes(out) == before
    capsys.readouterr()
    assert prepare('benchmark', [str(src), str(out), '--scale', '3', '--sigma', '0']) == 2
    err = capsys.readouterr().err.strip()
    assert 'sigma' in err and '--overwrite' in err and len(err.splitlines()) == 1
    assert prepare('benchmark', [str(src), str(out), '--scale', '3', '--sigma', '0', '--overwrite']) == 0
    hr = cv2.imread(str(out / 'HR' / 'head.png'))
    np.testing.assert_array_equal(cv2.imread(str(out / 'LRx3' / 'head.png')), blur_downsample(hr, 3, 0))


@pytest.mark.slow
def test_prepare_benchmark_cli_user_error(tmp_path):
    script = REPO_ROOT / 'scripts' / 'data_preparation' / 'prepare_benchmark.py'
    proc = commands.run([sys.executable, str(script), str(tmp_path / 'missing'), str(tmp_path / 'out')], REPO_ROOT)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f'prepare_benchmark.py: error: input folder not found: {tmp_path}/missing'), line


# ---------------------------------------------------------------- COCO command


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
    assert prepare('coco', argv) == 0

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
    assert prepare('coco', argv) == 0  # idempotent: images and LMDBs kept as they are
    assert mtimes(out) == before


def test_prepare_coco_text_prompts_feed_the_dataset(tmp_path):
    from pdnsr.data.prompt_paired_image_dataset import PromptPairedImageDataset
    from pdnsr.data.prompt_store import PromptStore

    images, captions = make_tiny_coco(tmp_path)
    out = tmp_path / 'coco'
    argv = ['--images', str(images), '--captions', str(captions), '--output', str(out), '--crop-size', '160']
    argv += ['--workers', '1', '--lmdb', '--prompts', '--clip-pretrained', 'none']
    assert prepare('coco', argv) == 0
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
    assert prepare('coco', argv) == 0  # the complete store is kept, without loading the encoder
    assert mtimes(out) == before


# ---------------------------------------------------------------- faces command


def test_prepare_faces(tmp_path, capsys):
    src = tmp_path / 'faces'
    src.mkdir()
    cv2.imwrite(str(src / '00000.png'), synthetic_image(300, 256, seed=3))  # not square: centre crop, resize
    cv2.imwrite(str(src / '00001.png'), synthetic_image(128, 128, seed=4))  # already HR size
    cv2.imwrite(str(src / '00002.png'), synthetic_image(100, 100, seed=5))  # too small: dropped
    cv2.imwrite(str(src / '00003.png'), synthetic_image(128, 128, seed=6))
    truncate(src / '00003.png', 0.6)  # skipped, with one line
    out = tmp_path / 'out'
    assert prepare('faces', [str(src), str(out), '--hr-size', '128', '--workers', '1']) == 0
    captured = capsys.readouterr()
    assert '1 dropped' in captured.out and '1 skipped' in captured.out
    assert [line for line in captured.err.splitlines() if line.startswith('skipped:')] == [
        f'skipped: image {src / "00003.png"} is truncated (its PNG data stops before the IEND chunk)'
    ]
    assert sorted(os.listdir(out / 'HR')) == ['00000.png', '00001.png']
    for scale, side in ((8, 16), (16, 8)):
        assert sorted(os.listdir(out / f'LRx{scale}')) == ['00000.png', '00001.png']
        assert cv2.imread(str(out / f'LRx{scale}' / '00000.png')).shape == (side, side, 3)
    assert cv2.imread(str(out / 'HR' / '00000.png')).shape == (128, 128, 3)
    np.testing.assert_array_equal(cv2.imread(str(out / 'HR' / '00001.png')), cv2.imread(str(src / '00001.png')))
    assert prepare('faces', [str(src), str(out), '--hr-size', '100']) == 2  # 100 is not a multiple of 8


# ---------------------------------------------------------------- prompts through the commands


@pytest.mark.shared
@needs_shared
def test_prepare_benchmark_mixed_prompts(tmp_path, capsys):
    from pdnsr.data.prompt_store import PromptStore

    src = tmp_path / 'in'
    src.mkdir()
    for name in ('baby', 'bird'):
        shutil.copy(SHARED_DATA / 'benchmarks' / 'Set5' / f'{name}.png', src)
    out = tmp_path / 'out'
    argv = [str(src), str(out), '--scale', '4', '--workers', '1', '--prompts', 'image', '--clip-pretrained', 'none']
    argv += ['--captions', str(SHARED_DATA / 'benchmarks' / 'captions.json'), '--captions-subset', 'Set5']
    assert prepare('benchmark', argv) == 0
    store = PromptStore(str(out / 'prompts_mixed_x4.lmdb'))
    assert sorted(store.keys()) == ['baby', 'bird']
    assert store.meta['kind'] == 'mixed' and store.meta['view'] == 'flip'
    store.close()
    before = mtimes(out)
    assert prepare('benchmark', argv) == 0
    assert mtimes(out) == before
    capsys.readouterr()
    assert prepare('benchmark', argv + ['--view', 'identity']) == 2  # a store made another way is not reused
    assert 'view' in capsys.readouterr().err


# ---------------------------------------------------------------- bad input images


def add_bad_images(images):
    """A JPEG cut to 60 % (cv2.imread decodes it without an error, the missing rows flat grey), a PNG cut to 60 %
    and a file that is not an image, all big enough to be kept; returns their paths in the order they are met."""
    bad = [images / 'bad_cut.jpg', images / 'bad_cut_png.png', images / 'bad_not_an_image.png']
    cv2.imwrite(str(bad[0]), synthetic_image(600, 640, seed=7), [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(bad[1]), synthetic_image(600, 640, seed=8))
    for path in bad[:2]:
        truncate(path, 0.6)
    bad[2].write_text('not an image')
    return bad


COCO_CROPS = [f'{k}_s{i:03d}.png' for k in ('000000000009', '000000000025') for i in range(1, 5)]


def test_prepare_coco_skips_bad_images_with_one_line_each(tmp_path, capsys):
    images, _ = make_tiny_coco(tmp_path)
    bad = add_bad_images(images)
    out = tmp_path / 'coco'
    assert prepare('coco', ['--images', str(images), '--output', str(out), '--workers', '2']) == 0
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if line.startswith('skipped:')]
    assert len(skipped) == 3 and all(str(path) in line for path, line in zip(bad, skipped)), skipped
    assert 'truncated' in skipped[0] and 'truncated' in skipped[1] and 'cannot decode' in skipped[2]
    assert '6 images: 2 kept, 1 dropped' in captured.out and '3 skipped (unreadable or truncated' in captured.out
    assert sorted(os.listdir(out / 'GT')) == COCO_CROPS  # nothing of the bad files, no temporary files
    assert all(sorted(os.listdir(out / f'LRx{s}')) == COCO_CROPS for s in (2, 4, 8))


def test_prepare_coco_strict_stops_at_the_first_bad_image(tmp_path, capsys):
    images, _ = make_tiny_coco(tmp_path)
    bad = add_bad_images(images)
    out = tmp_path / 'coco'
    argv = ['--images', str(images), '--output', str(out), '--workers', '1', '--strict']
    assert prepare('coco', argv) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f'prepare_coco.py: error: image {bad[0]} is truncated') and '--strict' in line, line
    assert not [name for name in files_under(out) if 'bad_' in name or '.tmp-' in name]


def test_prepare_coco_checks_clip_weights_before_any_image_work(tmp_path, capsys):
    images, captions = make_tiny_coco(tmp_path)
    out = tmp_path / 'coco'
    weights = tmp_path / 'nonexistent' / 'clip.bin'
    argv = ['--images', str(images), '--captions', str(captions), '--output', str(out), '--prompts', '--lmdb']
    start = time.monotonic()
    assert prepare('coco', argv + ['--clip-pretrained', str(weights)]) == 2
    elapsed = time.monotonic() - start
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith('prepare_coco.py: error: Cannot load pretrained weights') and str(weights) in line
    assert '--clip-pretrained' in line  # says how to pass a local file
    assert elapsed < 10 and files_under(out) == []


def test_prepare_coco_checks_captions_before_any_image_work(tmp_path, capsys):
    images, captions = make_tiny_coco(tmp_path)
    coco = json.loads(captions.read_text())
    only_images = tmp_path / 'only_images.json'
    only_images.write_text(json.dumps({'images': coco['images']}))
    no_caption = tmp_path / 'no_caption.json'
    no_caption.write_text(json.dumps(dict(coco, annotations=coco['annotations'][:3] + [{'id': 5, 'image_id': 9}])))
    other_split = tmp_path / 'captions_val2017.json'
    other_split.write_text(
        json.dumps(dict(coco, images=[dict(im, file_name=f'x{im["id"]}.jpg') for im in coco['images']]))
    )
    cases = (
        (only_images, "looks like COCO captions (it has 'images') but lacks 'annotations'"),
        (no_caption, "annotations[3] needs an 'image_id' and a 'caption'"),
        # 640x480 and 520x400 would be kept, 400x300 not (sizes from the file headers)
        (other_split, '2 image(s) that will be kept have no caption'),
    )
    for path, expected in cases:
        out = tmp_path / f'out_{path.stem}'
        argv = ['--images', str(images), '--captions', str(path), '--output', str(out), '--prompts']
        assert prepare('coco', argv + ['--clip-pretrained', 'none']) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith('prepare_coco.py: error: ') and expected in line and str(path) in line, line
        assert files_under(out) == []


def test_prepare_checks_the_output_folder_before_any_image_work(tmp_path, capsys):
    images, _ = make_tiny_coco(tmp_path)
    a_file = tmp_path / 'a_file'
    a_file.write_text('')
    assert prepare('coco', ['--images', str(images), '--output', str(a_file / 'coco')]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f'prepare_coco.py: error: --output {a_file / "coco"}: {a_file} exists and is not')


def test_pdnsr_prepare_dispatches_to_the_commands(tmp_path, capsys):
    src = tmp_path / 'faces'
    src.mkdir()
    cv2.imwrite(str(src / 'face.png'), synthetic_image(64, 64, seed=9))
    assert cli.main(['faces', str(src), str(tmp_path / 'out'), '--hr-size', '64', '--workers', '1']) == 0
    assert sorted(os.listdir(tmp_path / 'out' / 'LRx16')) == ['face.png']
    capsys.readouterr()
    assert cli.main(['benchmark', str(tmp_path / 'missing'), str(tmp_path / 'out2')]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f'pdnsr-prepare: error: input folder not found: {tmp_path / "missing"}')
    assert cli.main(['resize']) == 2 and "invalid choice: 'resize'" in capsys.readouterr().err
    # the console script named in setup.py is this function
    setup = (REPO_ROOT / 'setup.py').read_text()
    assert "'pdnsr-prepare=pdnsr.tools.prepare.cli:main'" in setup


def run_bounded(argv, timeout, **kwargs):
    """Run a command in its own process group; on timeout kill the whole group (a hung pool's workers too) and
    fail. Returns (returncode, stdout, stderr, seconds)."""
    start = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f'the command did not finish within {timeout} s (hung?); stderr: {err[-1500:]}')
    return proc.returncode, out, err, time.monotonic() - start


@pytest.mark.slow
def test_worker_pool_survives_threaded_opencv_work_in_the_same_process(tmp_path):
    # A fork pool deadlocks here: the forked workers hang in cv2.setNumThreads because the parent's OpenCV thread
    # pool has run. The subprocess keeps a hang from blocking the test session.
    images, _ = make_tiny_coco(tmp_path)
    out = tmp_path / 'coco'
    argv = ['--images', str(images), '--output', str(out), '--workers', '2', '--crop-size', '160', '--lmdb']
    code = textwrap.dedent(f"""
        import sys
        import cv2
        import numpy as np
        import pdnsr
        cv2.setNumThreads(2)
        img = np.random.default_rng(0).integers(0, 256, (3000, 3000, 3), dtype=np.uint8)
        for _ in range(6):
            img = cv2.GaussianBlur(cv2.resize(img, (3100, 3100)), (0, 0), 3)[:3000, :3000]
        from pdnsr.tools.prepare.cli import script_main
        sys.exit(script_main('coco', {argv!r}))
    """)
    returncode, _, err, _ = run_bounded([sys.executable, '-c', code], timeout=240)
    assert returncode == 0, err[-2000:]
    assert len(os.listdir(out / 'GT')) == 24 and (out / 'LRx8.lmdb' / 'data.mdb').is_file()


@pytest.mark.slow
def test_prepare_coco_script_fails_fast_without_clip_weights(tmp_path):
    # The tag's download host is a closed local port and every cache is empty: the encoder's reachability probe
    # fails at once, as it does within seconds on a machine without network.
    images, captions = make_tiny_coco(tmp_path)
    out = tmp_path / 'coco'
    script = REPO_ROOT / 'scripts' / 'data_preparation' / 'prepare_coco.py'
    argv = [sys.executable, str(script), '--images', str(images), '--captions', str(captions), '--output', str(out)]
    argv += ['--prompts', '--clip-pretrained', 'openai']
    env = dict(os.environ, HOME=str(tmp_path), HF_HOME=str(tmp_path / 'hf'), XDG_CACHE_HOME=str(tmp_path / 'cache'))
    env.update(HF_ENDPOINT='http://127.0.0.1:9', NO_PROXY='127.0.0.1', no_proxy='127.0.0.1')
    returncode, _, err, seconds = run_bounded(argv, timeout=180, env=env)
    assert returncode == 2, err[-2000:]
    (line,) = err.strip().splitlines()
    assert (
        line.startswith("prepare_coco.py: error: Cannot load pretrained weights 'openai'") and 'not reachable' in line
    )
    assert files_under(out) == []
    print(f'prepare_coco.py with unavailable CLIP weights: exit 2 after {seconds:.1f} s (including imports)')
