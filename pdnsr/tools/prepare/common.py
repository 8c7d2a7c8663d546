"""What the data preparation commands share.

Option types and flags, listing inputs, the checks made before any image work (output folder, prompt stores, CLIP
weights), a worker pool with a progress bar that skips bad images, a manifest that makes reruns idempotent, image LMDB
packing through basicsr, and building prompt stores.

Order of a command: every check that can fail in seconds (options, inputs, caption file, output folder, existing
prompt stores, loading CLIP) runs before the image work, which can take hours on COCO.

Idempotency: every image is written under a temporary name in its final folder and then moved into place with
``os.replace``, so a file that exists under its final name is complete. A rerun skips an item whose outputs all
exist. Each output folder also keeps ``prepare_info.json`` with the options that produced it and the files it wrote:
a rerun with different options (another sigma, scale, crop size...) is refused instead of silently mixing two
datasets, unless ``--overwrite`` is given; then every output is written again and, of the earlier outputs, only the
files the manifest lists are removed. An output folder is never an input folder, nor holds one
(:func:`pdnsr.tools.cli.check_apart`).
"""

import argparse
import json
import math
import multiprocessing
import os
import shutil
import sys
from typing import NamedTuple

import cv2
from tqdm import tqdm

from pdnsr.data.image_files import IMAGE_SUFFIXES, UnreadableImage, image_key, read_bgr, scan_images
from pdnsr.data.prompt_store import PromptStore, partial_path
from pdnsr.errors import UserError
from pdnsr.prompts.build import build_prompt_store
from pdnsr.prompts.encoder import PromptEncoder, WeightsUnavailable
from pdnsr.tools.cli import add_clip_arguments
from pdnsr.utils.files import TMP_PREFIX, write_text

MANIFEST = 'prepare_info.json'


def default_workers():
    """Default ``--workers``: min(4, cpu count)."""
    return min(4, os.cpu_count() or 1)


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
    """``--sigma``, ``--workers``, ``--overwrite``, ``--strict``."""
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
    parser.add_argument(
        '--strict',
        action='store_true',
        help='stop at the first unreadable, truncated or not 8-bit input image (default: skip it with a warning '
        'line and count it in the summary)',
    )


def add_prompt_args(parser):
    """Flags of the prompt-store builder (mirrors scripts/make_prompt_lmdb.py); returns the argument group."""
    group = parser.add_argument_group('prompt store')
    add_clip_arguments(group)
    group.add_argument('--device', default='cpu', help='device for the CLIP encoder. Default: cpu')
    group.add_argument('--batch-size', type=positive_int, default=32, help='encoder batch size. Default: 32')
    return group


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


# ---------------------------------------------------------------- checks before the image work


def prompt_store_needs_encoder(args, kind, out, view='flip'):
    """Before the image work: whether the prompt store ``out`` will be built, so CLIP must be loaded.

    An existing finished store is kept when it holds the right keys (checked after the image work, which decides
    them), so it needs no encoder; one made with another kind, model, weights or view is refused now.

    Args:
        args (argparse.Namespace): options of :func:`add_prompt_args` plus ``overwrite``.
        kind (str): 'text', 'image' or 'mixed'.
        out (str): the store path.
        view (str): the image view of 'image' and 'mixed' stores.

    Raises:
        UserError: ``out`` exists, was made differently, and ``--overwrite`` is not given.
    """
    if args.overwrite or not os.path.exists(out):
        return True
    store = PromptStore(out)
    meta = store.meta
    store.close()
    wanted = {'kind': kind, 'model_name': args.clip_model, 'view': None if kind == 'text' else view}
    if not os.path.isfile(args.clip_pretrained):  # a file path may be spelled differently; tags compare as-is
        wanted['pretrained'] = 'none' if args.clip_pretrained.lower() == 'none' else args.clip_pretrained
    differs = sorted(k for k, v in wanted.items() if k in meta and meta[k] != v)
    if differs:
        raise UserError(f'{out} exists but its {", ".join(differs)} differ; pass --overwrite to rebuild it')
    return False


def load_encoder(args):
    """The CLIP encoder, loaded before any image work: weights that cannot be loaded fail within seconds
    (:class:`WeightsUnavailable` says how to pass a local file), not after hours of cropping.

    Raises:
        UserError: the model, weights or device cannot be used.
    """
    try:
        return PromptEncoder(
            args.clip_model, pretrained=args.clip_pretrained, device=args.device, batch_size=args.batch_size
        )
    except WeightsUnavailable:
        raise
    # open_clip raises RuntimeError for an unknown --clip-model; torch an AssertionError for CUDA on a CPU-only build.
    except (RuntimeError, ValueError, AssertionError) as err:
        raise UserError(
            f'cannot load CLIP --clip-model {args.clip_model} --clip-pretrained {args.clip_pretrained} '
            f'--device {args.device}: {err}'
        ) from None


# ---------------------------------------------------------------- output folders


def all_exist(paths, overwrite=False):
    """True when every output exists (writes are atomic, so an existing file is a complete one) and is not to be
    written again (``overwrite``)."""
    return not overwrite and all(os.path.isfile(p) for p in paths)


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


def _manifest(out_dir):
    """The manifest of an output folder (its options and ``files``, the outputs it recorded), or None."""
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            manifest = json.load(f)
    except (OSError, ValueError) as err:
        raise UserError(f'{path} is not a readable manifest ({err}); delete it to prepare {out_dir} again') from None
    if not isinstance(manifest, dict):
        raise UserError(f'{path} is not a manifest of a pdnsr preparation; delete it to prepare {out_dir} again')
    return manifest


def _options(manifest):
    return {k: v for k, v in manifest.items() if k != 'files'}


def prepare_output(out_dir, subdirs, info, overwrite):
    """Create the output folders and check the manifest ``prepare_info.json`` against the current options.

    Args:
        out_dir (str): Output root.
        subdirs (list[str]): Image folders inside it.
        info (dict): JSON-serialisable options that determine the output content.
        overwrite (bool): other options are allowed: every output is written again (:func:`finish_output`
            removes only the files an earlier run recorded and this one did not write).

    Raises:
        UserError: the folder was prepared with other options and ``overwrite`` is false.
    """
    old = _manifest(out_dir)
    if old is not None and not overwrite and _options(old) != info:
        diff = sorted(k for k in set(_options(old)) | set(info) if old.get(k) != info.get(k))
        raise UserError(
            f'{out_dir} was prepared with other options ({", ".join(diff)} differ); '
            'use another output folder or pass --overwrite'
        )
    os.makedirs(out_dir, exist_ok=True)
    remove_stale_temps(out_dir)
    for sub in subdirs:
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
        remove_stale_temps(os.path.join(out_dir, sub))
    if old is None or _options(old) != info:  # an identical manifest is left untouched: reruns change nothing
        write_text(os.path.join(out_dir, MANIFEST), json.dumps({**info, 'files': (old or {}).get('files', [])}))


def finish_output(out_dir, files, overwrite):
    """Record ``files`` (paths relative to ``out_dir``: every output of this run, written or already complete) in
    the manifest. With ``overwrite``, the files an earlier run recorded that this one did not produce are removed:
    only those, so nothing the command did not write itself is ever deleted."""
    manifest = _manifest(out_dir)
    old = set(manifest.get('files', []))
    if overwrite:
        for rel in sorted(old - set(files)):
            path = os.path.normpath(os.path.join(out_dir, rel))
            if os.path.dirname(path).startswith(os.path.abspath(out_dir)) and os.path.isfile(path):
                os.remove(path)
        old = set()
    recorded = sorted(old | set(files))
    if recorded != manifest.get('files'):
        write_text(os.path.join(out_dir, MANIFEST), json.dumps({**manifest, 'files': recorded}))


# ---------------------------------------------------------------- image work


class Skipped(NamedTuple):
    """What a worker returns for an input image it cannot use (:class:`UnreadableImage`: unreadable, truncated,
    not decodable, not 8-bit)."""

    path: str
    reason: str


def read_input(path):
    """An input image for a worker (:func:`pdnsr.data.image_files.read_bgr`), or :class:`Skipped`.

    Returns:
        tuple[np.ndarray, bool] | Skipped: the (H, W, 3) uint8 BGR image and whether it was greyscale, or why not.
    """
    try:
        return read_bgr(path)
    except UnreadableImage as err:
        return Skipped(path, str(err))


def _init_worker():
    # One thread per process: the pool is the parallelism; nested torch/OpenCV threads would only oversubscribe.
    cv2.setNumThreads(1)
    import torch

    torch.set_num_threads(1)


def _pool_context(module):
    """Never fork: a child forked from a process that has run OpenCV's (or torch's) thread pool hangs in
    ``cv2.setNumThreads``. forkserver children fork from a clean server process that imported ``module`` once; spawn
    where there is no forkserver (Windows)."""
    if 'forkserver' in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context('forkserver')
        context.set_forkserver_preload([module])  # only used when this process starts its server
        return context
    return multiprocessing.get_context('spawn')


def run_parallel(func, items, workers, desc, unit='img'):
    """Yield ``func(item)`` for every item, in input order, with a tqdm bar on stderr.

    ``workers <= 1`` runs in this process (simpler to debug and no start-up cost for tiny jobs). Otherwise a process
    pool runs ``func``, a module-level function of the package (workers import it). Closing the generator early
    terminates the pool.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        # The bar is closed before an error leaves the generator, so the error's line is the last one on stderr.
        with tqdm(items, desc=desc, unit=unit, file=sys.stderr) as bar:
            for item in bar:
                yield func(item)
        return
    chunksize = max(1, min(16, len(items) // (workers * 4)))
    context = _pool_context(func.__module__)
    with context.Pool(min(workers, len(items)), initializer=_init_worker) as pool:
        yield from tqdm(
            pool.imap(func, items, chunksize=chunksize), total=len(items), desc=desc, unit=unit, file=sys.stderr
        )


def process_images(func, tasks, args, desc, folders):
    """Run ``func`` over ``tasks`` (:func:`run_parallel`), skipping the images it returns as :class:`Skipped`.

    Each skipped image gets one line on stderr as it is met; with ``args.strict`` the first one stops the run. When
    the run stops (error, ``--strict``, Ctrl-C) the temporary files of unfinished writes are removed from
    ``folders``, so nothing half-written is left.

    Returns:
        tuple[list, list[Skipped]]: the other results in input order, and the skipped images.

    Raises:
        UserError: ``args.strict`` and an input image is unusable (:class:`Skipped`).
    """
    results, skipped = [], []
    outputs = run_parallel(func, tasks, args.workers, desc)
    try:
        for result in outputs:
            if not isinstance(result, Skipped):
                results.append(result)
            elif args.strict:
                raise UserError(f'{result.reason} (--strict: stopped; without it, bad images are skipped)')
            else:
                tqdm.write(f'skipped: {result.reason}', file=sys.stderr)
                skipped.append(result)
    except BaseException:
        outputs.close()  # terminate the workers before cleaning up after them
        for folder in folders:
            remove_stale_temps(folder)
        raise
    return results, skipped


def skipped_summary(skipped):
    """The summary's words for the skipped images ('' when none)."""
    return f'; {len(skipped)} skipped (unreadable or truncated, or not 8-bit; listed above)' if skipped else ''


# ---------------------------------------------------------------- LMDBs


def build_prompts(args, kind, out, keys, encoder, captions=None, images_dir=None, view='flip'):
    """Build one prompt LMDB with ``pdnsr.prompts.build.build_prompt_store``; idempotent like the image folders.

    A finished store at ``out`` (already checked by :func:`prompt_store_needs_encoder`) that holds exactly ``keys``
    is kept; one with other keys is an error unless ``--overwrite``. An interrupted build (``out.partial``) is
    resumed.

    Args:
        args (argparse.Namespace): parsed options of :func:`add_prompt_args` plus ``overwrite``.
        kind (str): 'text', 'image' or 'mixed'.
        out (str): store path (``.lmdb`` folder).
        keys (list[str]): the keys the store must hold.
        encoder (PromptEncoder | None): from :func:`load_encoder`; None when the store exists and is not rebuilt.
        captions (dict | None), images_dir (str | None), view (str): passed to the builder.

    Returns:
        int | None: entries written by this call; None when an up-to-date store was kept.
    """
    if os.path.exists(out) and not args.overwrite:
        store = PromptStore(out)
        same = sorted(store.keys()) == sorted(keys)
        store.close()
        if not same:
            raise UserError(f'{out} exists but its keys differ; pass --overwrite to rebuild it')
        return None
    try:
        return build_prompt_store(
            kind,
            out,
            encoder,
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
