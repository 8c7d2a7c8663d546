"""Helpers shared by the data preparation scripts.

Listing images, reading them as 3-channel uint8, atomic writes, a worker pool with a progress bar, a manifest
that makes reruns idempotent, image LMDB packing through basicsr, and the prompt-store flags and call.

Idempotency: every image is written under a temporary name in its final folder and then moved into place with
``os.replace``, so a file that exists under its final name is complete. A rerun skips an item whose outputs all
exist. Each output folder also keeps ``prepare_info.json`` with the options that produced it: a rerun with
different options (another sigma, scale, crop size...) is refused instead of silently mixing two datasets,
unless ``--overwrite`` is given.
"""

import argparse
import functools
import json
import math
import multiprocessing
import os
import shutil
import sys

import cv2
import numpy as np
from tqdm import tqdm

from pdnsr.cli import add_clip_arguments
from pdnsr.data.image_files import IMAGE_SUFFIXES, TMP_PREFIX, image_key, scan_images
from pdnsr.data.prompt_store import PromptStore, partial_path
from pdnsr.errors import UserError
from pdnsr.prompts.build import build_prompt_store
from pdnsr.prompts.encoder import PromptEncoder, names_a_file

MANIFEST = 'prepare_info.json'


def default_workers():
    """Default ``--workers``: min(4, cpu count)."""
    return min(4, os.cpu_count() or 1)


def list_images(folder):
    """Sorted image paths directly inside ``folder`` (:func:`pdnsr.data.image_files.scan_images`).

    Raises:
        UserError: the folder is missing, holds no images, or two files share a key (name without extension),
            which would collide in the output folders and the LMDBs.
    """
    if not os.path.isdir(folder):
        raise UserError(f'input folder not found: {folder}')
    paths = sorted(scan_images(folder).values())
    if not paths:
        raise UserError(f'no images ({", ".join(IMAGE_SUFFIXES)}) in {folder}')
    return paths


def read_image(path):
    """Read an image as (H, W, 3) uint8 BGR.

    Greyscale images are replicated to 3 channels and an alpha channel is dropped, so every output folder
    holds 3-channel images (what the networks and CLIP expect).

    Returns:
        tuple[ndarray, bool]: the image and whether it was greyscale on disk.
    """
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise UserError(f'cannot read image {path}')
    if img.dtype != np.uint8:
        raise UserError(f'{path}: only 8-bit images are supported, got {img.dtype}')
    grey = img.ndim == 2 or img.shape[2] == 1
    if grey:
        img = cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img, grey


def all_exist(paths):
    """True when every output exists (writes are atomic, so an existing file is a complete one)."""
    return all(os.path.isfile(p) for p in paths)


def remove_stale_temps(folder):
    """Delete temporary files and LMDB folders left in ``folder`` by an interrupted run."""
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith(TMP_PREFIX):
                path = os.path.join(folder, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)


def prepare_output(out_dir, subdirs, info, overwrite):
    """Create the output folders and check ``prepare_info.json`` against the current options.

    Args:
        out_dir (str): Output root.
        subdirs (list[str]): Image folders inside it.
        info (dict): JSON-serialisable options that determine the output content.
        overwrite (bool): Delete the listed folders (and the manifest) first.

    Raises:
        UserError: the folder was prepared with other options and ``overwrite`` is false.
    """
    manifest = os.path.join(out_dir, MANIFEST)
    if overwrite:
        for sub in subdirs:
            shutil.rmtree(os.path.join(out_dir, sub), ignore_errors=True)
        if os.path.exists(manifest):
            os.remove(manifest)
    elif os.path.exists(manifest):
        with open(manifest) as f:
            old = json.load(f)
        if old != info:
            diff = sorted(k for k in set(old) | set(info) if old.get(k) != info.get(k))
            raise UserError(
                f'{out_dir} was prepared with other options ({", ".join(diff)} differ); '
                'use another output folder or pass --overwrite'
            )
    os.makedirs(out_dir, exist_ok=True)
    remove_stale_temps(out_dir)
    for sub in subdirs:
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
        remove_stale_temps(os.path.join(out_dir, sub))
    if not os.path.exists(manifest):  # an identical manifest is left untouched: reruns change nothing on disk
        tmp = manifest + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(info, f, indent=1, sort_keys=True)
        os.replace(tmp, manifest)


def _init_worker():
    # One thread per process: the pool is the parallelism; nested torch/OpenCV threads would only oversubscribe.
    cv2.setNumThreads(1)
    import torch

    torch.set_num_threads(1)


def run_parallel(func, items, workers, desc, unit='img'):
    """Apply ``func`` to every item with a process pool and a tqdm bar; results in input order.

    ``workers <= 1`` runs in this process (simpler to debug and no start-up cost for tiny jobs). ``func`` must be
    a module-level function so that it pickles.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [func(item) for item in tqdm(items, desc=desc, unit=unit, file=sys.stderr)]
    chunksize = max(1, min(16, len(items) // (workers * 4)))
    with multiprocessing.Pool(min(workers, len(items)), initializer=_init_worker) as pool:
        it = pool.imap(func, items, chunksize=chunksize)
        return list(tqdm(it, total=len(items), desc=desc, unit=unit, file=sys.stderr))


def positive_int(text):
    """argparse type: integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected an integer, got {text!r}') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected an integer >= 1, got {value}')
    return value


def non_negative_float(text):
    """argparse type: float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number, got {text!r}') from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f'expected a number >= 0, got {text}')
    return value


def add_common_args(parser):
    """``--workers``, ``--overwrite``, ``--sigma``."""
    parser.add_argument(
        '--sigma',
        type=non_negative_float,
        default=1.3,
        help='Gaussian blur sigma before bicubic down-sampling (paper: 1.3); 0 = plain bicubic. Default: 1.3',
    )
    parser.add_argument(
        '--workers',
        type=positive_int,
        default=default_workers(),
        help=f'parallel processes for image work. Default: min(4, cpu count) = {default_workers()}',
    )
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='delete and rebuild existing outputs (default: keep complete outputs, refuse changed options)',
    )


def add_prompt_args(parser):
    """Flags of the prompt-store builder (mirrors scripts/make_prompt_lmdb.py)."""
    group = parser.add_argument_group('prompt store')
    add_clip_arguments(group)
    group.add_argument('--device', default='cpu', help='device for the CLIP encoder. Default: cpu')
    group.add_argument('--batch-size', type=positive_int, default=32, help='encoder batch size. Default: 32')
    return group


def check_prompt_args(args):
    """Fail before the image work, not after it, when prompts cannot be built."""
    if names_a_file(args.clip_pretrained) and not os.path.isfile(args.clip_pretrained):
        raise UserError(f'--clip-pretrained {args.clip_pretrained}: no such checkpoint file')


def build_prompts(args, kind, out, keys, captions=None, images_dir=None, view='flip'):
    """Build one prompt LMDB with ``pdnsr.prompts.build.build_prompt_store``; idempotent like the image folders.

    A finished store at ``out`` that was made with the same kind, model and weights and holds exactly ``keys``
    is kept (the encoder is not even loaded); one that differs is an error unless ``--overwrite``. An
    interrupted build (``out.partial``) is resumed.

    Args:
        args (argparse.Namespace): parsed options of :func:`add_prompt_args` plus ``overwrite``.
        kind (str): 'text', 'image' or 'mixed'.
        out (str): store path (``.lmdb`` folder).
        keys (list[str]): the keys the store must hold.
        captions (dict | None), images_dir (str | None), view (str): passed to the builder.

    Returns:
        int | None: entries written by this call; None when an up-to-date store was kept.
    """
    if os.path.exists(out) and not args.overwrite:
        store = PromptStore(out)
        meta = store.meta
        wanted = {'kind': kind, 'model_name': args.clip_model, 'view': None if kind == 'text' else view}
        if not os.path.isfile(args.clip_pretrained):  # a file path may be spelled differently; tags compare as-is
            wanted['pretrained'] = 'none' if args.clip_pretrained.lower() == 'none' else args.clip_pretrained
        differs = sorted(k for k, v in wanted.items() if k in meta and meta[k] != v)
        if sorted(store.keys()) != sorted(keys):
            differs.append('keys')
        store.close()
        if differs:
            raise UserError(f'{out} exists but its {", ".join(differs)} differ; pass --overwrite to rebuild it')
        return None

    try:
        return build_prompt_store(
            kind,
            out,
            _encoder(args.clip_model, args.clip_pretrained, args.device, args.batch_size),
            captions=captions,
            images_dir=images_dir,
            view=view,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            resume=os.path.isdir(partial_path(out)) and not args.overwrite,
            progress=True,
        )
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        raise UserError(f'building {out}: {err}') from None


@functools.lru_cache(maxsize=1)
def _encoder(model_name, pretrained, device, batch_size):
    """One CLIP encoder per run: loading the weights costs seconds, and the faces script builds a store per scale."""
    return PromptEncoder(model_name=model_name, pretrained=pretrained, device=device, batch_size=batch_size)


def lmdb_keys(lmdb_path):
    """Keys listed in a basicsr image LMDB's meta_info.txt (None when there is none)."""
    meta = os.path.join(lmdb_path, 'meta_info.txt')
    if not os.path.isfile(meta):
        return None
    with open(meta) as f:
        return [image_key(line.split(' ')[0]) for line in f if line.strip()]


def make_image_lmdb(folder, lmdb_path, overwrite, workers):
    """Pack a folder of PNGs into a basicsr image LMDB with ``basicsr.utils.lmdb_util.make_lmdb_from_imgs``.

    basicsr's builder calls ``sys.exit`` when the output exists, so this checks first: an LMDB whose
    meta_info.txt lists exactly the folder's keys is complete and kept; anything else is an error unless
    ``overwrite``. The LMDB is built under a temporary name and renamed, so an interrupted build leaves no
    half-written store under the final name.

    Returns:
        bool: True if built, False if an up-to-date LMDB was kept.
    """
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs

    names = sorted(n for n in os.listdir(folder) if n.endswith('.png') and not n.startswith('.'))
    keys = [image_key(n) for n in names]
    if not names:
        raise UserError(f'no PNG images to pack in {folder}')
    if os.path.exists(lmdb_path):
        if overwrite:
            shutil.rmtree(lmdb_path)
        elif sorted(lmdb_keys(lmdb_path) or []) == keys:
            return False
        else:
            raise UserError(f'{lmdb_path} exists and does not match {folder}; delete it or pass --overwrite')
    parent, name = os.path.split(os.path.abspath(lmdb_path))
    tmp = os.path.join(parent, f'{TMP_PREFIX}{os.getpid()}-{name}')  # still ends with .lmdb, as basicsr requires
    shutil.rmtree(tmp, ignore_errors=True)
    make_lmdb_from_imgs(folder, tmp, names, keys, multiprocessing_read=workers > 1, n_thread=max(1, workers))
    os.replace(tmp, lmdb_path)
    return True
