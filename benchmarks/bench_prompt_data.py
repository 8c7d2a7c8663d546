"""Speed of the prompt data path; prints a markdown table and the command that produced it.

1. Random reads/s from a prompt store of 10,000 keys, d = 512, m = 5 rows per key (synthetic values).
2. Per-item time of PromptPairedImageDataset vs basicsr's PairedImageDataset on the same images (Set14 HR, LR made
   with basicsr's MATLAB-style imresize), same crops (same seeds), median over repetitions.
   Items are timed alternately, one of each class at a time, so that load from other processes hits both alike.
3. Batched vs one-at-a-time encoding (items/s) with open_clip ViT-B-32 with RANDOM weights (speed only).

    .venv/bin/python benchmarks/bench_prompt_data.py [--quick]
"""

import argparse
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pdnsr import compat  # noqa: E402

compat.apply()  # before anything imports basicsr

from basicsr.data.paired_image_dataset import PairedImageDataset  # noqa: E402
from basicsr.utils.matlab_functions import imresize  # noqa: E402
from common import run_benchmark  # noqa: E402  (after the compat patches)

from pdnsr.data.prompt_paired_image_dataset import PromptPairedImageDataset  # noqa: E402
from pdnsr.data.prompt_store import PromptStore, PromptStoreWriter  # noqa: E402
from pdnsr.utils.markdown import markdown_table  # noqa: E402

SET14 = REPO_ROOT.parent / 'shared' / 'data' / 'benchmarks' / 'Set14'


def bench_store_reads(tmp, n_keys, dim, rows, n_reads, reps):
    rng = np.random.default_rng(0)
    keys = [f'{i:012d}' for i in range(n_keys)]
    path = os.path.join(tmp, 'bench.lmdb')
    with PromptStoreWriter(path, {'encoder': 'synthetic', 'kind': 'text'}, dim) as writer:
        for start in range(0, n_keys, 1000):
            chunk = keys[start : start + 1000]
            writer.write_batch((k, rng.standard_normal((rows, dim)).astype(np.float32)) for k in chunk)
    store = PromptStore(path, expected_dim=dim)
    order = [keys[i] for i in rng.integers(0, n_keys, n_reads)]
    store.get(order[0])
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        for key in order:
            store.get(key)
        rates.append(n_reads / (time.perf_counter() - start))
    return statistics.median(rates)


def make_pairs(tmp, scale):
    hr_dir, lr_dir = os.path.join(tmp, 'HR'), os.path.join(tmp, 'LR')
    os.makedirs(hr_dir)
    os.makedirs(lr_dir)
    names = sorted(p.stem for p in SET14.glob('*.png'))
    for name in names:
        hr = cv2.imread(str(SET14 / f'{name}.png'), cv2.IMREAD_COLOR)
        h, w = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
        hr = hr[:h, :w]
        lr = np.clip(np.round(imresize(hr.astype(np.float32) / 255.0, 1 / scale) * 255.0), 0, 255).astype(np.uint8)
        cv2.imwrite(os.path.join(hr_dir, f'{name}.png'), hr)
        cv2.imwrite(os.path.join(lr_dir, f'{name}.png'), lr)
    rng = np.random.default_rng(1)
    prompts = os.path.join(tmp, 'set14_prompts.lmdb')
    with PromptStoreWriter(prompts, {'encoder': 'synthetic', 'kind': 'text'}, 512) as writer:
        writer.write_batch((n, rng.standard_normal((5, 512)).astype(np.float32)) for n in names)
    return hr_dir, lr_dir, prompts


def bench_dataset(tmp, phase, reps, scale=4, gt_size=96):
    hr_dir, lr_dir, prompts = (
        os.path.join(tmp, 'HR'),
        os.path.join(tmp, 'LR'),
        os.path.join(tmp, 'set14_prompts.lmdb'),
    )
    opt = {'dataroot_gt': hr_dir, 'dataroot_lq': lr_dir, 'io_backend': {'type': 'disk'}, 'scale': scale, 'phase': phase}
    if phase == 'train':
        opt.update(gt_size=gt_size, use_hflip=True, use_rot=True)
    plain = PairedImageDataset(dict(opt, io_backend={'type': 'disk'}))
    prompted = PromptPairedImageDataset(dict(opt, dataroot_prompt=prompts, prompt_dim=512))
    times = {'plain': [], 'prompt': []}
    pair = [('plain', plain), ('prompt', prompted)]
    for rep in range(reps):
        totals = {'plain': 0.0, 'prompt': 0.0}
        for i in range(len(plain)):
            # Item by item, alternating which class goes first, with the same seeds (same crops and flips): load
            # from other processes on the machine then hits both sides alike.
            for name, dataset in pair if (rep + i) % 2 == 0 else pair[::-1]:
                random.seed(rep * 100_003 + i)
                np.random.seed(rep * 100_003 + i)
                start = time.perf_counter()
                dataset[i]
                totals[name] += time.perf_counter() - start
        for name in totals:
            times[name].append(totals[name] / len(plain))
    # The part PromptPairedImageDataset adds, timed alone (not blurred by PNG decoding): read, choice, tensor.
    keys, n = prompted.prompt_keys, 20_000
    start = time.perf_counter()
    for j in range(n):
        torch.from_numpy(prompted._pick(prompted.prompt_store.get(keys[j % len(keys)])))
    extra = (time.perf_counter() - start) / n
    return statistics.median(times['plain']), statistics.median(times['prompt']), extra


def bench_encoding(n_text, n_images, batch_size):
    from pdnsr.prompts.encoder import PromptEncoder

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        encoder = PromptEncoder('ViT-B-32', pretrained=None, batch_size=batch_size)
    texts = [f'a photo number {i} of a zebra grazing on green grass near a lake' for i in range(n_text)]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(n_images)]
    encoder.encode_text(texts[:2])
    encoder.encode_images(images[:2])
    results = {}
    for kind, items, fn in (('text', texts, encoder.encode_text), ('image', images, encoder.encode_images)):
        start = time.perf_counter()
        fn(items, batch_size=batch_size)
        batched = len(items) / (time.perf_counter() - start)
        start = time.perf_counter()
        for item in items:
            fn([item], batch_size=1)
        single = len(items) / (time.perf_counter() - start)
        results[kind] = (batched, single)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='fewer repetitions (smoke run)')
    parser.add_argument('--threads', type=int, default=2, help='torch threads (default 2)')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    reps = 3 if args.quick else 7
    n_reads = 20_000 if args.quick else 100_000

    with tempfile.TemporaryDirectory() as tmp:
        reads = bench_store_reads(tmp, 10_000, 512, 5, n_reads, reps=3)
        make_pairs(tmp, scale=4)
        train = bench_dataset(tmp, 'train', reps)
        val = bench_dataset(tmp, 'val', reps)
    enc = bench_encoding(n_text=16 if args.quick else 64, n_images=8 if args.quick else 32, batch_size=32)

    cmd = ' '.join(['.venv/bin/python', 'benchmarks/bench_prompt_data.py', *map(shlex.quote, sys.argv[1:])])
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    print(f'Command: `{cmd}` (torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, '
          f'load average {load:.2f} at the end)\n')  # fmt: skip
    rows = [['PromptStore.get, random keys (10,000 keys, d=512, m=5), 1 process', f'{reads:,.0f} reads/s']]
    for phase, (plain, prompt, extra) in (('train, gt_size 96', train), ('val, full image', val)):
        times = f'{plain * 1e3:.2f} ms / {prompt * 1e3:.2f} ms ({(prompt / plain - 1) * 100:+.1f} %)'
        rows.append([f'Set14 x4 per item, {phase}: PairedImageDataset / PromptPairedImageDataset', times])
        rows.append([f'prompt part of an item alone ({phase}: read + choice + tensor)',
                     f'{extra * 1e6:.1f} µs ({extra / plain * 100:.2f} % of the item)'])  # fmt: skip
    for kind, (batched, single) in enc.items():
        rows.append([f'ViT-B-32 (random weights) {kind} encoding, batch 32 / one at a time',
                     f'{batched:.1f} / {single:.1f} items/s ({batched / single:.1f}x)'])  # fmt: skip
    print(markdown_table(['measurement', 'value'], rows))


if __name__ == '__main__':
    run_benchmark(main)
