"""pdnsr-app: the page's handler on good and bad inputs (no browser), the command's start-up refusals, and the page in
Debian's headless Chromium, driven by Playwright, against a real server on a free loopback port.

The browser test is skipped, with the reason, where Gradio, Playwright or ``/usr/bin/chromium`` is missing (``.ci/run``
installs all three). ``PDNSR_APP_SCREENSHOT=path`` keeps its screenshot there, and ``PDNSR_APP_WEIGHTS=model.pth``
runs it on another checkpoint (the demo's EDSR+ for docs/img/app.png)::

    PDNSR_APP_WEIGHTS=demo_output/experiments/demo_plus/models/net_g_latest.pth \\
        PDNSR_APP_SCREENSHOT=docs/img/app.png .venv/bin/python -m pytest -q tests/test_app.py -k chromium
"""

import importlib.util
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib

import commands
import cv2
import numpy as np
import pytest
from test_inference import EDSR_PLUS, _make_model

from conftest import REPO_ROOT
from pdnsr.data.image_files import read_rgb
from pdnsr.inference import Upsampler
from pdnsr.tools import app
from pdnsr.tools.sample_data import bicubic_resize, sample_photos
from pdnsr.utils.visualization import colour_bar

CHROMIUM = '/usr/bin/chromium'
BROWSER_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking']
CAPTIONS = ['a sharp photo', 'a blurry photo']  # the demo's captions
CLIP = ['--clip-model', 'ViT-B-32', '--clip-pretrained', 'none']  # the tiny model's checkpoint records no encoder


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """(option file, weights) of a tiny EDSR+ x2 with prompt_dim 512 (4 DCMs would be as good as 2)."""
    return _make_model(str(tmp_path_factory.mktemp('app_model')), 'edsr_plus', EDSR_PLUS.format(prompt_dim=512))


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Test files: ``lr.png`` (200x160 of the demo's held-out cat), ``hr.png`` (240x200), ``notes.txt``, ``big.png``."""
    root = tmp_path_factory.mktemp('app_files')
    cat = sample_photos()['chelsea']
    paths = {name: str(root / name) for name in ('lr.png', 'hr.png', 'notes.txt', 'big.png', 'bomb.png')}
    cv2.imwrite(paths['lr.png'], np.ascontiguousarray(cat[40:200, 130:330, ::-1]))
    cv2.imwrite(paths['hr.png'], np.ascontiguousarray(cat[20:220, 100:340, ::-1]))
    cv2.imwrite(paths['big.png'], np.zeros((300, 300, 3), np.uint8))
    with open(paths['notes.txt'], 'w') as f:
        f.write('not an image\n')
    with open(paths['bomb.png'], 'wb') as f:  # a 1 kB PNG whose header claims 20000 x 20000 pixels
        f.write(_png_header(20000, 20000))
    return paths


def _png_header(width, height):
    """The bytes of a PNG of ``width`` x ``height`` RGB pixels whose data stops after a few rows."""

    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    header = chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0))
    return b'\x89PNG\r\n\x1a\n' + header + chunk(b'IDAT', zlib.compress(bytes(1000))) + chunk(b'IEND', b'')


@pytest.fixture(scope='module')
def page(tiny, clip_encoder, tmp_path_factory):
    up = Upsampler.from_checkpoint(tiny[1], tiny[0], 'cpu', clip_model='ViT-B-32', clip_pretrained='none')
    return app.Page(up, str(tmp_path_factory.mktemp('app_work')), max_pixels=250 * 250)


def run(page, upload=None, **kwargs):
    kwargs = {'sample': None, 'kind': app.PROMPT_KINDS[0], 'captions': '\n'.join(CAPTIONS), 'dcms': page.dcms, **kwargs}
    return page.run(upload, kwargs.pop('sample'), kwargs.pop('kind'), kwargs.pop('captions'), **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# the handler
def test_two_captions_give_two_sr_images_attention_difference_and_downloads(page, files):
    out = run(page, files['lr.png'])
    assert re.fullmatch(r'Run \d+: 2 SR image\(s\), 200x160 -> 400x320 \(x2\) in [\d.]+ s', out['status']), out
    assert list(out['pictures'])[0] == 'bicubic' and len(out['pictures']) == 3 and len(out['files']) == 2
    sr = [read_rgb(path) for path in out['files']]
    assert all(s.shape == (320, 400, 3) for s in sr) and np.any(sr[0] != sr[1])
    assert np.array_equal(read_rgb(out['pictures']['bicubic']), bicubic_resize(read_rgb(files['lr.png']), 2))
    assert out['files'] == list(out['pictures'].values())[1:]  # the downloads are the SR images shown
    bar = colour_bar(320)[..., ::-1]
    assert len(out['attention']) == 2 * len(page.dcms) and len(page.dcms) == 2
    for path, label in out['attention']:
        picture = read_rgb(path)
        assert picture.shape == (320, 400 + bar.shape[1], 3) and np.array_equal(picture[:, 400:], bar), label
    difference, label = out['difference']
    assert read_rgb(difference).shape == (320, 400, 3) and 'largest channel difference' in label
    assert out['metrics'] == ''


def test_hr_option_makes_the_lr_with_the_projects_bicubic_and_scores_each_output(page, files):
    out = run(page, files['hr.png'], have_hr=True, dcms=[])
    hr = read_rgb(files['hr.png'])
    assert np.array_equal(read_rgb(out['pictures']['bicubic']), bicubic_resize(bicubic_resize(hr, 1 / 2), 2))
    assert all(read_rgb(path).shape == hr.shape for path in out['files']) and out['attention'] == []
    rows = [line for line in out['metrics'].splitlines() if line.startswith('| ') and 'PSNR' not in line]
    assert [r.split('|')[1].strip() for r in rows] == ['bicubic', *(f'SR {i}: {c}' for i, c in enumerate(CAPTIONS, 1))]
    for row in rows:
        psnr, ssim = (float(cell) for cell in row.split('|')[2:4])
        assert 5 < psnr < 60 and 0 < ssim <= 1
    assert 'Y channel, 2 border pixels cropped' in out['metrics']


def test_the_image_itself_an_image_prompt_and_a_sample_photo(page, files):
    out = run(page, files['lr.png'], kind=app.PROMPT_KINDS[1])
    assert list(out['pictures']) == ['bicubic', 'SR 1: the image itself'] and out['difference'] is None
    out = run(page, files['lr.png'], kind=app.PROMPT_KINDS[2], prompt_image=files['hr.png'], tile=32)
    assert list(out['pictures']) == ['bicubic', 'SR 1: image prompt hr.png'] and 'tiles of 32' in out['status']
    page.max_pixels, limit = 10**6, page.max_pixels
    try:
        out = run(page, None, sample='chelsea', dcms=[])
    finally:
        page.max_pixels = limit
    assert 'SR image(s), 451x300 -> 902x600' in out['status'], out['status']


LONG = ' '.join(['word'] * 80)
# name: (what the page is given, words of its one-line answer)
BAD_INPUTS = {
    'no image': (dict(upload=None), 'upload an image or pick a sample photo'),
    'a text file': (dict(upload='notes.txt'), 'notes.txt is not an image the page reads: cannot decode'),
    'an image over --max-pixels': (dict(upload='big.png'), 'big.png is 300x300 = 90000 pixels, more than the 62500'),
    'a decompression bomb': (dict(upload='bomb.png'), 'bomb.png is not an image the page reads: Image size (4000'),
    'an image prompt over --max-pixels': (dict(kind=app.PROMPT_KINDS[2], prompt_image='big.png'), 'image prompt big'),
    'an over-long caption': (dict(captions=f'a cat\n{LONG}'), 'caption 2 has 82 tokens'),
    'no caption': (dict(captions=' \n '), 'enter at least one caption'),
    'too many captions': (dict(captions='\n'.join(f'caption {i}' for i in range(7))), 'at most 6 at once'),
    'no image prompt': (dict(kind=app.PROMPT_KINDS[2]), 'upload the image prompt'),
    'an image prompt that is no image': (dict(kind=app.PROMPT_KINDS[2], prompt_image='notes.txt'), 'image prompt no'),
    'a negative tile': (dict(tile=-4), 'tile -4: give 0 (automatic) or a positive number'),
    'an HR image too small': (dict(have_hr=True, upload='tiny.png'), 'the HR image is 20x20: its sides need 32 px'),
    'no such sample photo': (dict(upload=None, sample='zebra'), "no sample photo 'zebra'"),
}


@pytest.mark.parametrize('name', sorted(BAD_INPUTS))
def test_a_bad_input_is_one_line_in_the_page_and_the_page_goes_on(page, files, tmp_path, name):
    given, words = BAD_INPUTS[name]
    cv2.imwrite(str(tmp_path / 'tiny.png'), np.full((20, 20, 3), 128, np.uint8))
    paths = {**files, 'tiny.png': str(tmp_path / 'tiny.png')}
    given = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in given.items()}
    given.setdefault('upload', files['lr.png'])
    out = run(page, **given)
    assert re.fullmatch(r'Run \d+: error: .+', out['status']) and words in out['status'], out['status']
    assert '\n' not in out['status'] and 'Traceback' not in out['status'] and '/tmp' not in out['status']
    assert out['pictures'] == {} and out['files'] == [] and out['attention'] == [] and out['difference'] is None
    assert 'SR image(s)' in run(page, files['lr.png'])['status']  # the next good run works


# ---------------------------------------------------------------------------------------------------------------------
# the command's start-up
def _needs(module):
    """Skip, with the reason, where ``module`` (of the ``app`` extra) is not installed; imports nothing."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f'{module} is not installed: pip install -e ".[app]" (Python >= 3.10)')


def test_without_gradio_the_command_says_how_to_install_it(monkeypatch, capsys, tiny):
    monkeypatch.setitem(sys.modules, 'gradio', None)  # what importlib sees where Gradio is not installed
    assert app.main(['--weights', tiny[1], '--opt', tiny[0], *CLIP]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install -e ".[app]"' in err[0], err


def test_a_checkpoint_that_is_not_a_pdnsr_model_is_one_line_at_start_up(capsys, tmp_path, files):
    _needs('gradio')
    import torch

    torch.save({'epoch': 3, 'optimizer': {}}, tmp_path / 'other.pth')
    for weights in (files['notes.txt'], str(tmp_path / 'other.pth')):
        assert app.main(['--weights', weights, '--port', '1']) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith('pdnsr-app: error: ') and 'Traceback' not in err[0], err


def test_a_prompt_encoder_other_than_the_checkpoints_is_refused_at_start_up(capsys, tmp_path, tiny):
    """As pdnsr-infer: the page encodes prompts only with the encoder the model was trained with."""
    _needs('gradio')
    import torch

    from pdnsr import provenance
    from pdnsr.inference import read_network_options

    encoder = provenance.encoder_record({'model_name': 'ViT-B-32', 'pretrained': 'none', 'kind': 'text'})
    record = provenance.make_record(read_network_options(tiny[0]), encoder, 512)
    torch.save({**torch.load(tiny[1]), provenance.KEY: record}, tmp_path / 'recorded.pth')
    args = ['--weights', str(tmp_path / 'recorded.pth'), '--clip-model', 'ViT-B-16', '--clip-pretrained', 'none']
    assert app.main([*args, '--port', str(_free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'ViT-B-16' in err[0] and '--force-encoder' in err[0], err


def test_without_weights_or_demo_model_it_says_to_run_the_demo(capsys, tmp_path, monkeypatch):
    _needs('gradio')
    monkeypatch.chdir(tmp_path)
    assert app.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'run the demo first (python scripts/demo.py)' in err[0], err


def test_a_port_in_use_is_one_line_before_the_model_loads(capsys):
    _needs('gradio')
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen()
        assert app.main(['--weights', 'not-read.pth', '--port', str(busy.getsockname()[1])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'Address already in use; choose another' in err[0], err


def test_importing_pdnsr_and_the_app_module_imports_no_gradio(tmp_path):
    script = tmp_path / 'imports.py'
    script.write_text('import sys\nimport pdnsr.inference, pdnsr.tools.app\nassert "gradio" not in sys.modules\n')
    proc = commands.run([sys.executable, str(script)], cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------------------------
# the page in a real browser
def _sync_playwright():
    _needs('gradio')
    _needs('playwright')
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f'Chromium not found at {CHROMIUM}: apt-get install chromium (.ci/run installs it)')
    from playwright.sync_api import sync_playwright

    return sync_playwright


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _serve(args, log_path, timeout=180):
    """Start ``pdnsr-app ARGS`` and wait for its "serving" line; returns (process, its temporary folder)."""
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    with open(log_path, 'w') as log:  # the child writes to its own copy of the file descriptor
        streams = dict(stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        proc = subprocess.Popen([sys.executable, '-m', 'pdnsr.tools.app', *args], cwd=REPO_ROOT, env=env, **streams)
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = re.search(r'serving http://\S+ \(Ctrl-C stops; files in (\S+), removed then\)', open(log_path).read())
        if found:
            return proc, found[1]
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise AssertionError(f'pdnsr-app did not start:\n{open(log_path).read()[-3000:]}')


def _wait_status(page, run_number):
    """The status line of run ``run_number`` once it is shown."""
    script = f"() => (document.querySelector('#status')?.innerText || '').includes('Run {run_number}:')"
    page.wait_for_function(script, timeout=60_000)
    return page.inner_text('#status').strip()


def _upload(page, elem, path):
    if page.locator(f'#{elem} button[aria-label=Clear]').count():
        page.click(f'#{elem} button[aria-label=Clear]')
    page.set_input_files(f'#{elem} input[type=file]', path)
    page.wait_for_selector(f'#{elem} >> text={os.path.splitext(os.path.basename(path))[0]}')


def _fetch(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]


@pytest.mark.slow
def test_the_page_in_headless_chromium(tiny, files, tmp_path):
    sync_playwright = _sync_playwright()
    port = _free_port()
    weights = os.environ.get('PDNSR_APP_WEIGHTS')
    model = ['--weights', weights] if weights else ['--weights', tiny[1], '--opt', tiny[0], *CLIP]
    proc, workdir = _serve([*model, '--device', 'cpu', '--port', str(port)], tmp_path / 'app.log')
    hosts = set()
    try:
        assert os.path.isdir(workdir) and os.path.basename(workdir).startswith('pdnsr-app-')
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
            page = browser.new_page(viewport={'width': 1280, 'height': 900})
            page.on('request', lambda request: hosts.add(request.url.split('/')[2]))
            page.goto(f'http://127.0.0.1:{port}/')
            page.wait_for_selector('#run')
            assert 'ViT-B-32' in page.inner_text('body')  # the page says which encoder
            _upload(page, 'upload', files['lr.png'])
            page.fill('#captions textarea', '\n'.join(CAPTIONS))
            page.click('#run')
            assert re.match(r'Run 1: 2 SR image\(s\), 200x160 -> 400x320 \(x2\)', _wait_status(page, 1))
            page.wait_for_function("() => document.querySelectorAll('#downloads a[href]').length === 2")
            sr = [_fetch(a.get_attribute('href')) for a in page.query_selector_all('#downloads a[href]')]
            assert all(s.shape == (320, 400, 3) for s in sr) and np.any(sr[0] != sr[1])
            page.wait_for_function("() => document.querySelectorAll('#attention img').length >= 4")
            masks = [_fetch(img.get_attribute('src')) for img in page.query_selector_all('#attention img')]
            bar = colour_bar(320)[..., ::-1]
            assert all(m.shape == (320, 400 + bar.shape[1], 3) and np.array_equal(m[:, 400:], bar) for m in masks)
            assert page.locator('#slider img').count() == 2 and page.locator('#difference img').count() == 1
            page.wait_for_timeout(300)  # the images' last paint
            page.screenshot(path=str(tmp_path / 'app.png'), full_page=True)

            _upload(page, 'upload', files['notes.txt'])  # a text file: one line in the page
            page.click('#run')
            status = _wait_status(page, 2)
            assert status.startswith('Run 2: error: notes.txt is not an image') and '\n' not in status, status
            assert 'Traceback' not in page.inner_text('body')

            _upload(page, 'upload', files['lr.png'])  # and the page still works
            page.fill('#captions textarea', CAPTIONS[1])
            page.click('#run')
            assert _wait_status(page, 3).startswith('Run 3: 1 SR image(s)')
            browser.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    if os.environ.get('PDNSR_APP_SCREENSHOT'):  # 256 colours: a third of the size, for the docs
        from PIL import Image

        shot = Image.open(tmp_path / 'app.png').quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        shot.save(os.environ['PDNSR_APP_SCREENSHOT'], optimize=True)
    assert hosts == {f'127.0.0.1:{port}'}, hosts  # nothing fetched from (or sent to) anywhere else
    assert proc.returncode == 0 and not os.path.exists(workdir), open(tmp_path / 'app.log').read()[-2000:]
