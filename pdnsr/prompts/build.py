"""Build a prompt store from captions and / or images: the library side of ``scripts/make_prompt_lmdb.py``.

Kinds of prompt (one store each, recorded in its metadata):

- ``text``: one row per caption of the image;
- ``image``: one row, the CLIP embedding of the image (its horizontally flipped view by default);
- ``mixed``: one row per caption, ``normalize(text + image)`` (see :meth:`PromptEncoder.encode_mixed`).

Keys follow BasicSR (:func:`pdnsr.data.image_files.image_key`): the image file name without extension; a caption file
names its images the same way.
"""

import json
import os

from basicsr.utils import get_root_logger
from tqdm import tqdm

from pdnsr.data.image_files import image_key, read_rgb, scan_images
from pdnsr.data.prompt_store import PromptStoreWriter, partial_path
from pdnsr.prompts.encoder import VIEWS

KINDS = ('text', 'image', 'mixed')


def _clean_captions(key, captions, source):
    if isinstance(captions, str):
        captions = [captions]
    if not isinstance(captions, (list, tuple)):
        raise ValueError(f'{source}: captions of {key!r} must be a list of strings, got {type(captions).__name__}.')
    cleaned = []
    for caption in captions:
        if not isinstance(caption, str):
            raise ValueError(f'{source}: a caption of {key!r} is {type(caption).__name__}, not a string.')
        if caption.strip():
            cleaned.append(caption.strip())
    return cleaned


def _short(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + '...'


def _load_coco(data, source):
    """Captions of a COCO captions file, every entry checked: a message names the first bad one."""
    for field in ('images', 'annotations'):
        if field not in data:
            present = 'images' if field == 'annotations' else 'annotations'
            raise ValueError(
                f'Caption file {source} looks like COCO captions (it has {present!r}) but lacks {field!r}; a COCO '
                'captions file (captions_*.json) has both lists.'
            )
        if not isinstance(data[field], list):
            raise ValueError(f'Caption file {source}: {field!r} must be a list, got {type(data[field]).__name__}.')
    names = {}
    for i, image in enumerate(data['images']):
        if (
            not isinstance(image, dict)
            or not isinstance(image.get('id'), (int, str))
            or not isinstance(image.get('file_name'), str)
        ):
            raise ValueError(
                f"Caption file {source}: images[{i}] needs an 'id' and a 'file_name' string, got {_short(image)}."
            )
        names[image['id']] = image_key(image['file_name'])
    captions = {}
    for i, ann in enumerate(data['annotations']):
        if not isinstance(ann, dict) or 'image_id' not in ann or 'caption' not in ann:
            raise ValueError(
                f"Caption file {source}: annotations[{i}] needs an 'image_id' and a 'caption', got {_short(ann)}."
            )
        image_id = ann['image_id']
        if not isinstance(image_id, (int, str)) or image_id not in names:
            raise ValueError(
                f'Caption file {source}: annotations[{i}] (id {ann.get("id")}) refers to image_id {_short(image_id)}, '
                "which no entry of 'images' has."
            )
        if not isinstance(ann['caption'], str):
            raise ValueError(
                f'Caption file {source}: annotations[{i}] (id {ann.get("id")}) has a caption of type '
                f'{type(ann["caption"]).__name__}, not a string.'
            )
        key = names[image_id]
        captions.setdefault(key, []).extend(_clean_captions(key, ann['caption'], source))
    missing = len(set(names.values()) - set(captions))
    if missing:
        get_root_logger().warning(f'{source}: {missing} images have no caption; they get no text prompt.')
    return captions


def load_captions(path, subset=None):
    """Read captions.

    Accepted layouts (JSON):

    - ``{key: [caption, ...]}`` (a single string is one caption);
    - ``{set_name: {key: [caption, ...]}}``, e.g. ``benchmarks/captions.json``; ``subset`` picks one set, otherwise
      all sets are merged (a key in two sets is an error);
    - COCO ``captions_*.json``: ``images`` (``id``, ``file_name``) and ``annotations`` (``image_id``, ``caption``);
      key = file name without extension; all captions of an image are kept. A file with either top-level key is
      read as COCO, and every entry is checked.

    Args:
        path (str): JSON file.
        subset (str | None): set name for the ``{set_name: {...}}`` layout.

    Returns:
        dict[str, list[str]]: key -> captions (in file order, stripped, empty ones dropped).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or not one of the layouts; the message names the first bad entry.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Caption file {path} does not exist.')
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f'Caption file {path} is not valid JSON: {err}') from err
    if not isinstance(data, dict):
        raise ValueError(f'Caption file {path}: expected a JSON object, got {type(data).__name__}.')

    if 'images' in data or 'annotations' in data:
        if subset is not None:
            raise ValueError(
                f'Caption file {path} is COCO-format; it has no sets, so --captions-subset does not apply.'
            )
        return _load_coco(data, path)

    nested = [isinstance(v, dict) for v in data.values()]
    if any(nested) and not all(nested):
        raise ValueError(f'Caption file {path} mixes sets ({{name: {{key: captions}}}}) and keys ({{key: captions}}).')
    if not any(nested):
        if subset is not None:
            raise ValueError(f'Caption file {path} has no sets, so --captions-subset {subset!r} does not apply.')
        return {key: _clean_captions(key, caps, path) for key, caps in data.items()}

    if subset is not None:
        if subset not in data:
            raise ValueError(f'Caption file {path} has no set {subset!r}; it has {sorted(data)}.')
        sets = {subset: data[subset]}
    else:
        sets = data
    captions = {}
    for set_name, entries in sets.items():
        for key, caps in entries.items():
            if key in captions:
                raise ValueError(
                    f'Caption file {path}: key {key!r} is in more than one set; choose one with --captions-subset '
                    f'(sets: {sorted(data)}).'
                )
            captions[key] = _clean_captions(key, caps, f'{path}[{set_name}]')
    return captions


def _report_unmatched(what, keys, logger):
    if keys:
        keys = sorted(keys)
        logger.warning(f'{len(keys)} {what}; they are skipped: {keys[:5]}{" ..." if len(keys) > 5 else ""}')


def build_prompt_store(
    kind,
    out,
    encoder,
    captions=None,
    images_dir=None,
    view='flip',
    batch_size=32,
    overwrite=False,
    resume=False,
    progress=True,
    captions_subset=None,
):
    """Encode prompts with ``encoder`` and write them to the prompt store ``out``.

    The store is written to ``<out>.partial`` and renamed to ``out`` when complete, one LMDB transaction per batch
    of keys. A killed build leaves ``out`` untouched; ``resume=True`` keeps the finished batches and encodes the
    rest in the same batches, so the result is identical to an uninterrupted build with the same ``batch_size``.

    Args:
        kind (str): 'text', 'image' or 'mixed'.
        out (str): store directory to create (``*.lmdb``).
        encoder (PromptEncoder): the CLIP wrapper.
        captions (str | dict[str, list[str]] | None): caption file (see :func:`load_captions`) or mapping; needed
            for 'text' and 'mixed'.
        images_dir (str | None): folder of images; needed for 'image' and 'mixed'.
        view (str): image view for 'image' / 'mixed': 'flip' (paper's default) or 'identity'.
        batch_size (int): keys per batch (and per transaction).
        overwrite (bool): replace an existing store (and discard an unfinished build).
        resume (bool): continue ``<out>.partial``.
        progress (bool): show a tqdm progress bar.
        captions_subset (str | None): set name when ``captions`` is a file of several sets.

    Returns:
        int: number of keys in the finished store.
    """
    logger = get_root_logger()
    out = os.fspath(out).rstrip('/\\')
    if kind not in KINDS:
        raise ValueError(f'kind must be one of {KINDS}, got {kind!r}.')
    if view not in VIEWS:
        raise ValueError(f'view must be one of {VIEWS}, got {view!r}.')
    if int(batch_size) < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
    batch_size = int(batch_size)
    if kind in ('text', 'mixed') and captions is None:
        raise ValueError(f'kind {kind!r} needs captions (--captions FILE).')
    if kind in ('image', 'mixed') and images_dir is None:
        raise ValueError(f'kind {kind!r} needs an image folder (--images DIR).')
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f'{out} already exists; pass --overwrite to replace it.')
    if os.path.exists(partial_path(out)) and not (resume or overwrite):
        raise FileExistsError(
            f'An unfinished build {partial_path(out)} exists; pass --resume to continue it or --overwrite to start '
            'over.'
        )

    if isinstance(captions, (str, os.PathLike)):
        captions = load_captions(captions, subset=captions_subset)
    if captions is not None:
        captions = {key: caps for key, caps in captions.items() if caps}
    images = scan_images(images_dir) if images_dir is not None else None

    if kind == 'text':
        keys = sorted(captions)
    elif kind == 'image':
        keys = list(images)
    else:
        keys = sorted(set(images) & set(captions))
        _report_unmatched(f'images in {images_dir} have no caption', set(images) - set(captions), logger)
        _report_unmatched('captioned keys have no image', set(captions) - set(images), logger)
    if not keys:
        raise ValueError(f'Nothing to encode for kind {kind!r}: no keys (check the caption file and image folder).')

    meta = {**encoder.metadata(), 'kind': kind, 'view': None if kind == 'text' else view}
    writer = PromptStoreWriter(out, meta, encoder.embed_dim, resume=resume and not overwrite, overwrite=overwrite)
    with writer:
        todo = [key for key in keys if key not in writer]
        stale = writer.done_keys - set(keys)
        if stale:
            logger.warning(f'{len(stale)} keys of the unfinished build are not in the current inputs; kept.')
        if len(todo) < len(keys):
            logger.info(f'Resuming {writer.partial}: {len(keys) - len(todo)} of {len(keys)} keys already done.')
        bar = tqdm(
            total=len(keys), initial=len(keys) - len(todo), unit='key', desc=f'{kind} prompts', disable=not progress
        )
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            writer.write_batch(zip(chunk, _encode_chunk(kind, chunk, encoder, captions, images, view, batch_size)))
            bar.update(len(chunk))
        bar.close()
    total = len(writer.done_keys)
    logger.info(f'Wrote {kind} prompt store {out}: {total} keys, d={encoder.embed_dim}.')
    return total


def _encode_chunk(kind, keys, encoder, captions, images, view, batch_size):
    """Embeddings of a batch of keys: list of (m_i, d) float32 numpy arrays."""
    if kind == 'image':
        emb = encoder.encode_images([read_rgb(images[k]) for k in keys], view=view, batch_size=batch_size)
        return [row[None].numpy() for row in emb]
    if kind == 'mixed':
        embs = encoder.encode_mixed(
            [captions[k] for k in keys],
            [read_rgb(images[k]) for k in keys],
            view=view,
            keys=keys,
            batch_size=batch_size,
        )
        return [e.numpy() for e in embs]
    flat = [c for k in keys for c in captions[k]]
    flat_keys = [k for k in keys for _ in captions[k]]
    emb = encoder.encode_text(flat, keys=flat_keys, batch_size=batch_size)
    out, pos = [], 0
    for k in keys:
        out.append(emb[pos : pos + len(captions[k])].numpy())
        pos += len(captions[k])
    return out
