"""The prompt store: one LMDB per prompt set, key = image key, value = float32 embeddings of shape (m, d).

Format (version 1):

- key: the image key as UTF-8 (BasicSR's rule: file name without extension);
- value: raw little-endian float32 bytes of an (m, d) array, m >= 1 prompts for that image, no pickle;
- the reserved key ``__pdnsr_meta__`` holds UTF-8 JSON metadata (encoder, pretrained, d, dtype, kind, view, count,
  build time, format version), written last, when the build is committed;
- while a build runs, it writes into ``<path>.partial`` and keeps its settings under ``__pdnsr_build__`` so that an
  interrupted build can be resumed with the same encoder; the directory is renamed to ``<path>`` on commit, so a
  store at ``<path>`` is always complete.

Build stores with ``scripts/make_prompt_lmdb.py``; see ``docs/prompts.md``.
"""

import json
import os
import re
import shutil
import time

import lmdb
import numpy as np

META_KEY = '__pdnsr_meta__'
BUILD_KEY = '__pdnsr_build__'
RESERVED_KEYS = (META_KEY, BUILD_KEY)
FORMAT_VERSION = 1
DEFAULT_SUBIMAGE_PATTERN = r'^(?P<parent>.+)_s\d+$'
_BUILD_HINT = 'build one with `python scripts/make_prompt_lmdb.py --kind text --captions CAPTIONS.json --out PATH.lmdb`'
_DTYPE = np.dtype('<f4')


class _SharedEnv:
    """One read-only LMDB environment and read transaction per store file per process.

    LMDB (and py-lmdb >= 3, which enforces it) forbids opening the same environment twice in one process, yet one
    process often holds several readers of one store (train and validation sets, the model's metadata check). They
    all share this handle. ``closed`` tells holders that the store was rebuilt under the same path.
    """

    def __init__(self, env, identity):
        self.env, self.identity, self.pid, self.closed = env, identity, os.getpid(), False
        self.txn = env.begin(write=False, buffers=True)

    def close(self):
        self.closed = True
        if self.pid == os.getpid():
            self.txn.abort()
        # In a forked child this closes only the inherited handle (the parent's stays valid); it must be closed
        # there, or py-lmdb refuses to open the same files again in the child.
        self.env.close()


_SHARED_ENVS = {}  # realpath of the store -> _SharedEnv


def close_shared(path):
    """Close this process's handle on the store at ``path`` (readers re-open on their next use). Needed only
    before opening the same LMDB files directly with ``lmdb.open``, e.g. to modify a store in place."""
    entry = _SHARED_ENVS.pop(os.path.realpath(path), None)
    if entry is not None and not entry.closed:
        entry.close()


def _shared_env(path, data_file):
    """The process's handle on the store at ``path``, opened (or re-opened after a fork or a rebuild) if needed."""
    real = os.path.realpath(path)
    st = os.stat(data_file)
    identity = (st.st_dev, st.st_ino)
    entry = _SHARED_ENVS.get(real)
    if entry is not None and not entry.closed and entry.pid == os.getpid() and entry.identity == identity:
        return entry
    if entry is not None and not entry.closed:
        entry.close()
    env = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False, max_readers=2048)
    entry = _SharedEnv(env, identity)
    _SHARED_ENVS[real] = entry
    return entry


def partial_path(path):
    """Where an unfinished build of the store ``path`` lives."""
    return os.fspath(path).rstrip('/\\') + '.partial'


def parent_key(key, pattern=DEFAULT_SUBIMAGE_PATTERN):
    """Map a sub-image key to the key of the image it was cropped from.

    basicsr's ``extract_subimages.py`` names crops ``<name>_s001``, ``<name>_s002``, ...; they share the parent's
    prompt. A key that does not match ``pattern`` (or ``pattern=None``) maps to itself.

    Args:
        key (str): image key.
        pattern (str | re.Pattern | None): regular expression with a named group ``parent``.

    Returns:
        str: the parent key.
    """
    if pattern is None:
        return key
    match = re.match(pattern, key)
    if match is None:
        return key
    return match.group('parent')


class PromptStore:
    """Read-only view of a prompt LMDB.

    The LMDB environment is opened on first use and re-opened when the process id changes, so a store built in the
    main process can be handed to DataLoader workers (an LMDB handle must not cross a fork). One read transaction is
    kept open for the life of the handle: the store is read-only, so nothing can go stale, and it makes a read a
    single B-tree lookup plus a copy.

    Args:
        path (str | os.PathLike): the store directory (``*.lmdb``).
        expected_dim (int | None): embedding size the caller needs (the network's ``prompt_dim``); a store with a
            different d is refused.

    Raises:
        FileNotFoundError: no store at ``path``.
        ValueError: not an LMDB, truncated, corrupt, metadata missing, or d differs from ``expected_dim``.
    """

    def __init__(self, path, expected_dim=None):
        self._path = os.fspath(path)
        self._expected_dim = None if expected_dim is None else int(expected_dim)
        # The LMDB handle of this process (shared with other readers of the store), its transaction, the pid that
        # opened it, the metadata and the key list: all opened on first use.
        self._env = self._txn = self._shared = self._pid = self._meta = self._keys = None

    # ------------------------------------------------------------------ opening
    def _open(self):
        path = self._path
        if not os.path.exists(path):
            if os.path.isdir(partial_path(path)):
                raise FileNotFoundError(
                    f'Prompt store {path} does not exist, but an unfinished build {partial_path(path)} does: '
                    'finish it with `python scripts/make_prompt_lmdb.py ... --resume`.'
                )
            raise FileNotFoundError(f'Prompt store {path} does not exist; {_BUILD_HINT}.')
        data_file = os.path.join(path, 'data.mdb')
        if not os.path.isdir(path) or not os.path.isfile(data_file):
            raise ValueError(f'{path} is not an LMDB directory (no data.mdb); {_BUILD_HINT}.')
        try:
            entry = _shared_env(path, data_file)
        except lmdb.Error as err:
            raise ValueError(
                f'Prompt store {path} cannot be opened as LMDB ({err}); it is corrupt: rebuild it.'
            ) from err
        env = entry.env
        # A data.mdb shorter than the pages its header uses would be mmapped and crash the process with SIGBUS on
        # the first read past the end; refuse it here instead.
        used_bytes = (env.info()['last_pgno'] + 1) * env.stat()['psize']
        file_bytes = os.path.getsize(data_file)
        if file_bytes < used_bytes:
            entry.close()
            raise ValueError(
                f'Prompt store {path} is truncated: data.mdb has {file_bytes} bytes but its header needs '
                f'{used_bytes}; rebuild it ({_BUILD_HINT}).'
            )
        try:
            meta = self._read_meta(entry.txn)
        except ValueError:
            entry.close()
            raise
        self._shared, self._env, self._txn, self._pid, self._meta = entry, env, entry.txn, os.getpid(), meta

    def _read_meta(self, txn):
        raw = txn.get(META_KEY.encode())
        if raw is None:
            hint = ' (it looks like an unfinished build: resume it)' if txn.get(BUILD_KEY.encode()) else ''
            raise ValueError(
                f'Prompt store {self._path} has no metadata key {META_KEY!r}{hint}; it was not built by '
                f'scripts/make_prompt_lmdb.py or it is corrupt: rebuild it.'
            )
        try:
            meta = json.loads(bytes(raw).decode('utf-8'))
            dim = int(meta['d'])
            count = int(meta['count'])
            version = int(meta.get('format_version', 0))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise ValueError(
                f'Prompt store {self._path}: metadata {META_KEY!r} is corrupt ({err!r}); rebuild it.'
            ) from err
        if version != FORMAT_VERSION:
            raise ValueError(
                f'Prompt store {self._path} has format version {version}; this pdnsr reads version {FORMAT_VERSION}.'
            )
        if meta.get('dtype') != 'float32' or dim <= 0 or count < 0:
            raise ValueError(
                f'Prompt store {self._path}: metadata is corrupt (dtype={meta.get("dtype")!r}, d={dim}, '
                f'count={count}); rebuild it.'
            )
        if self._expected_dim is not None and dim != self._expected_dim:
            raise ValueError(
                f'Prompt store {self._path} holds embeddings of dimension d={dim}, but {self._expected_dim} is '
                f'expected (prompt_dim); build the store with an encoder of embedding size {self._expected_dim} or '
                f'set prompt_dim: {dim}.'
            )
        return meta

    def _ensure_open(self):
        if self._env is None or self._pid != os.getpid() or self._shared.closed:
            # After a fork the inherited handle must not be used; after a rebuild the old one is gone.
            self._env = self._txn = self._shared = None
            self._open()

    def close(self):
        """Release this reader (it re-opens on the next use). The process-wide handle stays open for other readers
        of the same store; a forked DataLoader worker closes its inherited copy and opens its own."""
        self._env = self._txn = self._shared = None

    def __getstate__(self):
        # Pickled into spawn-started workers: send the path, not the handle.
        state = self.__dict__.copy()
        state['_env'] = state['_txn'] = state['_pid'] = state['_shared'] = None
        return state

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001  (interpreter shutdown: modules may be gone)
            pass

    # ------------------------------------------------------------------ reading
    @property
    def path(self):
        """str: the store directory."""
        return self._path

    @property
    def meta(self):
        """dict: the store's metadata (encoder, pretrained, d, dtype, kind, view, count, built, format_version)."""
        self._ensure_open()
        return dict(self._meta)

    @property
    def dim(self):
        """int: embedding size d."""
        self._ensure_open()
        return int(self._meta['d'])

    def keys(self):
        """list[str]: all image keys in key order (reserved keys excluded)."""
        self._ensure_open()
        if self._keys is None:
            reserved = {k.encode() for k in RESERVED_KEYS}
            with self._env.begin(write=False) as txn:
                self._keys = [
                    bytes(k).decode('utf-8') for k in txn.cursor().iternext(values=False) if k not in reserved
                ]
        return list(self._keys)

    def __len__(self):
        self._ensure_open()
        return int(self._meta['count'])

    def __contains__(self, key):
        self._ensure_open()
        if key in RESERVED_KEYS:
            return False
        return self._txn.get(key.encode('utf-8')) is not None

    def get(self, key):
        """Embeddings of one image key.

        Args:
            key (str): image key.

        Returns:
            np.ndarray: float32 array of shape (m, d), a copy owned by the caller.

        Raises:
            KeyError: the key is not in the store.
            ValueError: the value's length is not a multiple of 4 * d (corrupt store).
        """
        self._ensure_open()
        buf = None if key in RESERVED_KEYS else self._txn.get(key.encode('utf-8'))
        if buf is None:
            raise KeyError(f'Prompt key {key!r} is not in prompt store {self._path} ({len(self)} keys).')
        self._check_size(key, len(buf))
        # The buffer points into the LMDB map and is only valid inside the transaction: copy it out.
        return np.frombuffer(buf, dtype=_DTYPE).reshape(-1, self._meta['d']).astype(np.float32, copy=True)

    def _check_size(self, key, nbytes):
        """A value must hold m >= 1 float32 rows of d numbers."""
        dim = self._meta['d']
        if nbytes == 0 or nbytes % (4 * dim):
            raise ValueError(
                f'Prompt store {self._path}: value of key {key!r} has {nbytes} bytes, not a positive multiple of '
                f'4 * d = {4 * dim}; the store is corrupt: rebuild it ({_BUILD_HINT}).'
            )

    def _check_finite(self, key, values):
        if not np.isfinite(values).all():
            raise ValueError(
                f'Prompt store {self._path}: the embeddings of key {key!r} hold NaN or infinite values; the store is '
                f'corrupt: rebuild it ({_BUILD_HINT}).'
            )

    def verify(self):
        """Check every value: its length (m >= 1 rows of d float32) and that its numbers are finite; and the key count.

        Meant for opening a store for a dataset, once in the main process: a truncated, corrupt or NaN value is found
        in well under a second for 10,000 keys, instead of in a DataLoader worker, or as a NaN loss, mid-training.

        Returns:
            int: the number of keys checked.

        Raises:
            ValueError: the first bad key, its byte length and the expected multiple, or a count that differs from
                the metadata's, or a value with NaN or infinite numbers; the store must be rebuilt.
        """
        self._ensure_open()
        reserved = {k.encode() for k in RESERVED_KEYS}
        count = 0
        # buffers=True (the shared transaction): len() of a value reads its size, not its bytes.
        with self._txn.cursor() as cursor:
            for raw_key, value in cursor.iternext(keys=True, values=True):
                if raw_key in reserved:
                    continue
                key = bytes(raw_key).decode('utf-8', 'replace')
                self._check_size(key, len(value))
                self._check_finite(key, np.frombuffer(value, dtype=_DTYPE))
                count += 1
        if count != len(self):
            raise ValueError(
                f'Prompt store {self._path} holds {count} keys but its metadata says {len(self)}; the store is '
                f'corrupt: rebuild it ({_BUILD_HINT}).'
            )
        return count

    def __repr__(self):
        return f'PromptStore({self._path!r})'


class PromptStoreWriter:
    """Write a prompt store atomically: into ``<path>.partial``, renamed to ``path`` by :meth:`commit`.

    Use as a context manager: leaving the block normally commits; leaving it by an exception (or a killed process)
    leaves the ``.partial`` directory, which ``resume=True`` continues.

    Args:
        path (str | os.PathLike): the final store directory.
        encoder_meta (dict): JSON-serialisable description of how values were made (encoder, pretrained, kind,
            view, ...); saved in the metadata and, on resume, compared with the unfinished build's.
        dim (int): embedding size d.
        map_size (int | None): initial LMDB map size in bytes; grown automatically when full.
        resume (bool): continue an existing ``.partial`` (keys already there are kept); if False a stale
            ``.partial`` is deleted.
        overwrite (bool): replace an existing store at ``path`` on commit.
    """

    def __init__(self, path, encoder_meta, dim, map_size=None, resume=False, overwrite=False):
        self.path = os.fspath(path).rstrip('/\\')
        self.partial = partial_path(self.path)
        self.dim = int(dim)
        self.overwrite = overwrite
        self._build_meta = {'encoder_meta': dict(encoder_meta), 'd': self.dim}
        json.dumps(self._build_meta)  # fail now, not at commit, if it is not serialisable
        if os.path.exists(self.path) and not overwrite:
            raise FileExistsError(f'Prompt store {self.path} already exists; pass overwrite=True (--overwrite).')
        if os.path.exists(self.partial) and not resume:
            shutil.rmtree(self.partial)
        resuming = os.path.isdir(self.partial)
        os.makedirs(self.partial, exist_ok=True)
        self._map_size = int(map_size or 64 * 1024**2)
        self._env = lmdb.open(self.partial, map_size=self._map_size, readahead=False, meminit=False)
        self._map_size = self._env.info()['map_size']  # an existing partial may already be larger
        self._done = set()
        try:
            if resuming:
                self._check_resumable()
            else:
                self._put_many([(BUILD_KEY, json.dumps(self._build_meta).encode())])
        except BaseException:
            self._env.close()
            raise
        self._committed = False

    def _check_resumable(self):
        with self._env.begin() as txn:
            raw = txn.get(BUILD_KEY.encode())
            if raw is None:
                raise ValueError(f'{self.partial} is not an unfinished prompt store build; delete it to start over.')
            old = json.loads(raw.decode('utf-8'))
            if old != self._build_meta:
                raise ValueError(
                    f'Cannot resume {self.partial}: it was started with {old}, now {self._build_meta}; use the same '
                    'encoder settings, or pass --overwrite to start over.'
                )
            reserved = {k.encode() for k in RESERVED_KEYS}
            self._done = {k.decode('utf-8') for k in txn.cursor().iternext(values=False) if k not in reserved}

    @property
    def done_keys(self):
        """set[str]: keys already written (including those found when resuming)."""
        return set(self._done)

    def __contains__(self, key):
        return key in self._done

    def _put_many(self, items, delete=()):
        """Put ``items`` ((str key, bytes) pairs) and delete the keys ``delete`` in one write transaction, growing the
        map (and retrying) while it is full."""
        # One transaction per batch: a killed build loses at most the batch in flight, and what it kept is a prefix
        # of the batches, which is what makes a resumed build bit-identical to an uninterrupted one.
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value in items:
                        txn.put(key.encode('utf-8'), value)
                    for key in delete:
                        txn.delete(key.encode('utf-8'))
                return
            except lmdb.MapFullError:
                self._map_size *= 2
                self._env.set_mapsize(self._map_size)

    def write_batch(self, items):
        """Write several keys in one transaction.

        Args:
            items (Iterable[tuple[str, np.ndarray]]): (key, embeddings (m, d)) pairs.
        """
        encoded = []
        for key, emb in items:
            if key in RESERVED_KEYS:
                raise ValueError(f'{key!r} is a reserved key of the prompt store format; rename the image.')
            arr = np.asarray(emb, dtype=_DTYPE)
            if arr.ndim == 1:
                arr = arr[None]
            if arr.ndim != 2 or arr.shape[1] != self.dim or arr.shape[0] == 0:
                raise ValueError(f'Embeddings of key {key!r} have shape {arr.shape}; expected (m, {self.dim}), m >= 1.')
            if not np.isfinite(arr).all():
                raise ValueError(
                    f'Embeddings of key {key!r} hold NaN or infinite values; a prompt store keeps finite ones.'
                )
            encoded.append((key, np.ascontiguousarray(arr).tobytes()))
        self._put_many(encoded)
        self._done.update(key for key, _ in encoded)

    def write(self, key, emb):
        """Write one key: ``emb`` of shape (m, d) or (d,)."""
        self.write_batch([(key, emb)])

    def commit(self):
        """Write the metadata, close, and move ``<path>.partial`` to ``path``.

        Returns:
            dict: the metadata written.
        """
        meta = {
            **self._build_meta['encoder_meta'],
            'd': self.dim,
            'dtype': 'float32',
            'count': len(self._done),
            'built': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
            'format_version': FORMAT_VERSION,
        }
        self._put_many([(META_KEY, json.dumps(meta).encode('utf-8'))], delete=[BUILD_KEY])
        self._env.sync(True)
        self._env.close()
        if os.path.exists(self.path):
            if not self.overwrite:
                raise FileExistsError(f'Prompt store {self.path} appeared during the build; not overwriting it.')
            old = self.path + '.old'
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.path, old)
            os.replace(self.partial, self.path)
            shutil.rmtree(old)
        else:
            os.replace(self.partial, self.path)
        self._committed = True
        return meta

    def close(self):
        """Close without committing (the ``.partial`` stays for a later resume)."""
        if not self._committed:
            self._env.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.close()
        return False
