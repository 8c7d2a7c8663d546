"""pdnsr-app in a real browser: first page load, and click to all outputs for a 256 x 256 LR with two captions on the
demo's EDSR+ (``demo_output/``; run ``python scripts/demo.py`` first). Debian's headless Chromium, driven by
Playwright, against ``pdnsr-app`` started as a subprocess on a free loopback port.

- first page load: a fresh browser context (empty cache) opens the page, until its Run button shows;
- click to all outputs: from the click on Run until every output is in the page: the status line, bicubic and the
  two SR images, the slider's two, the attention masks of the first and last DCM per caption, the difference, the two
  downloads (every ``<img>`` decoded); each click has captions of its own, so no caption embedding is reused;
- of which the page's handler: its own time of the run (the status line: reading, CLIP, the network, the PNGs).

``--quick``: a tiny random EDSR+ instead, a 64 x 64 LR, one repetition (a smoke run). Where Gradio, Playwright or
``/usr/bin/chromium`` is missing, it prints one SKIPPED line and exits 0.

    .venv/bin/python benchmarks/bench_app.py [--quick] [--reps 5] [--size 256] [--weights M.pth] [--screenshot P]
"""

import importlib.util
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import common

# isort: split
import cv2
import numpy as np
import torch

from pdnsr import provenance
from pdnsr.archs.network_options import build_network
from pdnsr.tools.app import DEMO_WEIGHTS
from pdnsr.tools.sample_data import sample_photos

CHROMIUM = '/usr/bin/chromium'
BROWSER_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking']
TARGETS = {'load': 2.0, 'click': 3.0}
# The floor of Gradio itself: the first load of a page of a Markdown, a File, a Textbox and a Run button.
MINIMAL_PAGE = """
import sys, time
import gradio as gr
with gr.Blocks(analytics_enabled=False) as blocks:
    gr.Markdown('minimal'), gr.File(), gr.Textbox(), gr.Button('Run', elem_id='run')
blocks.launch(server_port=int(sys.argv[-1]), quiet=True, prevent_thread_lock=True, ssr_mode=False)
print('serving http', flush=True)
while True:
    time.sleep(1)
"""
# Every output in the page after run N: its status line, and each <img> of the outputs decoded (bicubic + 2 SR, the
# slider's 2, 2 captions x 2 DCMs, the difference), the two downloads.
ALL_OUTPUTS = """([n, images]) => {
  if (!(document.querySelector('#status')?.innerText || '').includes(`Run ${n}:`)) return false;
  const shown = [...document.querySelectorAll('#sr img, #slider img, #attention img, #difference img')];
  return document.querySelectorAll('#downloads a[href]').length === 2 && shown.length >= images
    && shown.every((img) => img.complete && img.naturalWidth > 0);
}"""


def tiny_model(path):
    """A tiny random EDSR+ x2 checkpoint that records its network and encoder (random ViT-B-32), for --quick."""
    network = dict(type='EDSRPlus', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=2, upscale=2, prompt_dim=512)
    torch.manual_seed(0)
    state = build_network(network).state_dict()
    encoder = provenance.encoder_record({'model_name': 'ViT-B-32', 'pretrained': 'none', 'kind': 'text'})
    torch.save({'params': state, provenance.KEY: provenance.make_record(network, encoder, 512)}, path)
    return path


def missing():
    """Why the browser cannot run here (None when it can)."""
    for module in ('gradio', 'playwright'):
        if importlib.util.find_spec(module) is None:
            return f'{module} is not installed: pip install -e ".[app]" (Python >= 3.10)'
    if not os.access(CHROMIUM, os.X_OK):
        return f'Chromium not found at {CHROMIUM}: apt-get install chromium'
    return None


def start(command, threads, log_path):
    """``(process, its start time, url)``: ``command + ['--port', N]`` started on a free loopback port."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED='1', GRADIO_ANALYTICS_ENABLED='False')
    with open(log_path, 'w') as log:
        streams = dict(stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        proc = subprocess.Popen([*command, '--port', str(port)], cwd=common.REPO_ROOT, env=env, **streams)
    return proc, time.perf_counter(), f'http://127.0.0.1:{port}/'


def wait_serving(proc, started, log_path, timeout=300):
    """Seconds from ``started`` to the process's "serving" line."""
    while time.perf_counter() - started < timeout and proc.poll() is None:
        if 'serving http' in open(log_path).read():
            return time.perf_counter() - started
        time.sleep(0.1)
    proc.kill()
    raise common.UserError(f'a server did not start: {open(log_path).read()[-1500:]}')


def measure(urls, lr_path, reps, screenshot=None):
    """{measure: [seconds, ...]}: page loads in fresh contexts (interleaved with the minimal Gradio page at
    ``urls['minimal']``), then clicks on Run with new captions each time."""
    from playwright.sync_api import sync_playwright

    times = {'load': [], 'minimal': [], 'click': [], 'handler': []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        for _ in range(reps):
            for which in ('load', 'minimal'):
                context = browser.new_context(viewport={'width': 1280, 'height': 900})
                page = context.new_page()
                start = time.perf_counter()
                page.goto(urls[which])
                page.wait_for_selector('#run', state='visible')
                times[which].append(time.perf_counter() - start)
                context.close()
        url = urls['load']
        page = browser.new_page(viewport={'width': 1280, 'height': 900})
        page.goto(url)
        page.set_input_files('#upload input[type=file]', lr_path)
        page.wait_for_selector('#upload >> text=lr')
        for n in range(1, reps + 2):  # the first click warms the server up (and is reported on its own)
            page.fill('#captions textarea', f'a sharp photo, take {n}\na blurry photo, take {n}')
            start = time.perf_counter()
            page.click('#run')
            page.wait_for_function(ALL_OUTPUTS, arg=[n, 10], timeout=120_000, polling=20)
            times['click'].append(time.perf_counter() - start)
            status = page.inner_text('#status')
            found = re.search(r' in ([\d.]+) s$', status.strip())
            if not found:
                raise common.UserError(f'run {n} of the page failed: {status}')
            times['handler'].append(float(found[1]))
        if screenshot:
            page.screenshot(path=screenshot, full_page=True)
        browser.close()
    return times


def main():
    parser = common.make_parser(__doc__.splitlines()[0], reps=5)
    parser.add_argument('--size', type=int, default=256, help='side of the LR image (default 256)')
    parser.add_argument('--weights', help=f'the checkpoint (default the demo model, {DEMO_WEIGHTS})')
    parser.add_argument('--screenshot', help='also save a full-page screenshot after the last click here')
    args = parser.parse_args()
    device = common.setup(args)
    if device.type != 'cpu':
        parser.error('bench_app measures the page on the CPU; use --device cpu')
    size = 64 if args.quick else args.size
    common.print_header(device, f'pdnsr-app in headless Chromium: {size}x{size} LR, two captions, {args.reps} rounds')
    why = missing()
    if why:
        print(f'SKIPPED: {why}')
        return 0
    with tempfile.TemporaryDirectory(prefix='bench_app_') as tmp:
        if args.weights and not os.path.isfile(args.weights):
            raise common.UserError(f'--weights {args.weights} does not exist')
        weights = args.weights or (tiny_model(os.path.join(tmp, 'tiny.pth')) if args.quick else DEMO_WEIGHTS)
        if not os.path.isfile(weights):
            print(f'SKIPPED: no model at {weights}: run the demo first (python scripts/demo.py, ~5 min on 2 cores)')
            return 0
        lr_path = os.path.join(tmp, 'lr.png')
        cat = sample_photos()['chelsea']
        cv2.imwrite(lr_path, np.ascontiguousarray(cat[20 : 20 + size, 100 : 100 + size, ::-1]))
        app = [sys.executable, '-m', 'pdnsr.tools.app', '--weights', weights]
        servers, started, urls = {}, {}, {}
        try:
            for which, command in (('load', app), ('minimal', [sys.executable, '-c', MINIMAL_PAGE])):  # side by side
                servers[which], started[which], urls[which] = start(command, args.threads, f'{tmp}/{which}.log')
            for which, proc in servers.items():
                started[which] = wait_serving(proc, started[which], f'{tmp}/{which}.log')
            times = measure(urls, lr_path, args.reps, args.screenshot)
        finally:
            for proc in servers.values():
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)

    def row(label, samples, target=None, first=None):
        median = statistics.median(samples)
        cells = [label, f'≤ {target} s' if target else '–', f'{first if first is not None else samples[0]:.2f}']
        cells += [f'{median:.2f}', f'{min(samples):.2f}–{max(samples):.2f}']
        return cells + [common.verdict(median, target, quick=args.quick) if target else '']

    click, handler = times['click'], times['handler']
    print(f'model: {weights}; server start (process to serving): {started["load"]:.1f} s\n')
    common.print_table(
        ['measure', 'target', 'first s', 'median s', 'min–max s', 'verdict'],
        [
            row('first page load (fresh browser context, to the Run button)', times['load'], TARGETS['load']),
            row('first page load of a minimal Gradio page, for reference', times['minimal']),
            row(f'click to all outputs ({size}x{size} LR, two captions)', click[1:], TARGETS['click'], click[0]),
            row('of which the page handler (its status line)', handler[1:], None, handler[0]),
        ],
    )
    print(
        'first: the first page load after the server started (each load is a fresh context: all are in the median); '
        'the first click (it warms the server up: not in the median).'
    )
    return 0


if __name__ == '__main__':
    common.run_benchmark(main)
