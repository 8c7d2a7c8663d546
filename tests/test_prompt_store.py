"""Prompt store (LMDB) reader and writer, on real LMDB files in a temp dir.

Values here are synthetic unit vectors: these tests are about the storage format, not the encoder (the encoder and
the builder are covered in test_prompt_encoder.py and test_make_prompt_lmdb.py).
"""

import json
import multiprocessing as mp
import os

import lmdb
import numpy as np
import pytest

import pdnsr  # noqa: F401  (compat before basicsr)
from pdnsr.data.prompt_store import META_KEY, PromptStore, PromptStoreWriter, close_shared, parent_key, partial_path

D = 16


def _emb(rng, m, d=D):
    x = rng.standard_normal((m, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _write_store(path, values, d=D, **kwargs):
    with PromptStoreWriter(path, {'encoder': 'test', 'kind': 'text', 'view': None}, d, **kwargs) as writer:
        writer.write_batch(values.items())
    return path


@pytest.fixture
def values():
    rng = np.random.default_rng(0)
    return {f'img{i:03d}': _emb(rng, 1 + i % 5) for i in range(40)}


@pytest.fixture
def store_path(tmp_path, values):
    return _write_store(str(tmp_path / 'prompts.lmdb'), values)


def test_round_trip_values_keys_and_metadata(store_path, values):
    store = PromptStore(store_path)
    assert len(store) == len(values)
    assert store.keys() == sorted(values)
    assert store.dim == D
    meta = store.meta
    assert meta['d'] == D and meta['dtype'] == 'float32' and meta['count'] == len(values)
    assert meta['kind'] == 'text' and meta['encoder'] == 'test' and meta['format_version'] == 1 and meta['built']
    for key, expected in values.items():
        got = store.get(key)
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    assert 'img000' in store and 'nope' not in store and META_KEY not in store
    assert not os.path.exists(partial_path(store_path))


def test_values_are_raw_little_endian_float32(store_path, values):
    env = lmdb.open(store_path, readonly=True, lock=False)
    with env.begin() as txn:
        raw = txn.get(b'img003')
        meta = json.loads(txn.get(META_KEY.encode()))
    env.close()
    np.testing.assert_array_equal(np.frombuffer(raw, '<f4').reshape(-1, D), values['img003'])
    assert meta['count'] == len(values)


def test_missing_key_names_key_and_store(store_path):
    store = PromptStore(store_path)
    with pytest.raises(KeyError, match=r"'zebra'.*prompts\.lmdb"):
        store.get('zebra')
    with pytest.raises(KeyError, match='__pdnsr_meta__'):
        store.get(META_KEY)


def test_dim_mismatch_names_both_numbers_and_store(store_path):
    with pytest.raises(ValueError, match=rf'd={D}.*512 is expected') as err:
        PromptStore(store_path, expected_dim=512).get('img000')
    assert store_path in str(err.value)
    assert PromptStore(store_path, expected_dim=D).dim == D


def test_not_a_store(tmp_path):
    with pytest.raises(FileNotFoundError, match='make_prompt_lmdb.py'):
        PromptStore(str(tmp_path / 'absent.lmdb')).keys()
    empty = tmp_path / 'empty.lmdb'
    empty.mkdir()
    with pytest.raises(ValueError, match=r'not an LMDB.*make_prompt_lmdb\.py'):
        PromptStore(str(empty)).keys()


def test_truncated_store_is_refused(store_path):
    data = os.path.join(store_path, 'data.mdb')
    size = os.path.getsize(data)
    with open(data, 'r+b') as f:
        f.truncate(size // 2)
    # Without the check this would be a SIGBUS (the map would reach past the end of the file).
    with pytest.raises(ValueError, match=r'truncated|corrupt'):
        PromptStore(store_path).get('img039')


def test_corrupt_metadata_and_values(store_path):
    env = lmdb.open(store_path)
    with env.begin(write=True) as txn:
        txn.put(b'img001', b'\x00' * (4 * D + 3))
    env.close()
    with pytest.raises(ValueError, match=rf"prompts\.lmdb.*'img001'.*{4 * D + 3} bytes"):
        PromptStore(store_path).get('img001')

    close_shared(store_path)  # the readers above share one handle; editing the files in place needs it closed
    env = lmdb.open(store_path)
    with env.begin(write=True) as txn:
        txn.put(META_KEY.encode(), b'{not json')
    env.close()
    with pytest.raises(ValueError, match=r'metadata .* corrupt'):
        PromptStore(store_path).keys()

    close_shared(store_path)
    env = lmdb.open(store_path)
    with env.begin(write=True) as txn:
        txn.delete(META_KEY.encode())
    env.close()
    with pytest.raises(ValueError, match='no metadata'):
        PromptStore(store_path).keys()


def test_verify_reads_every_length_and_names_the_first_bad_key(store_path, values):
    assert PromptStore(store_path).verify() == len(values)
    close_shared(store_path)
    env = lmdb.open(store_path)
    with env.begin(write=True) as txn:  # a value cut short, as a torn write leaves it
        txn.put(b'img007', txn.get(b'img007')[: 4 * D + 10])
        txn.put(b'img020', b'')
    env.close()
    store = PromptStore(store_path)
    with pytest.raises(ValueError) as err:
        store.verify()
    message = str(err.value)
    assert store_path in message and "'img007'" in message and f'has {4 * D + 10} bytes' in message
    assert f'multiple of 4 * d = {4 * D}' in message and 'rebuild it' in message
    np.testing.assert_array_equal(store.get('img006'), values['img006'])  # the other keys still read

    close_shared(store_path)
    env = lmdb.open(store_path)
    with env.begin(write=True) as txn:
        for key in (b'img007', b'img020'):
            txn.put(key, np.zeros((1, D), '<f4').tobytes())
        txn.delete(b'img039')  # the metadata still counts it
    env.close()
    with pytest.raises(ValueError, match=rf'holds {len(values) - 1} keys but its metadata says {len(values)}'):
        PromptStore(store_path).verify()


def test_plain_lmdb_without_metadata(tmp_path):
    path = str(tmp_path / 'images.lmdb')
    env = lmdb.open(path, map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b'baby', b'png bytes')
    env.close()
    with pytest.raises(ValueError, match=r'no metadata key .*make_prompt_lmdb\.py'):
        PromptStore(path).keys()


def test_map_grows_when_full(tmp_path):
    rng = np.random.default_rng(1)
    values = {f'k{i}': _emb(rng, 5, 512) for i in range(200)}  # 2 MB of values into a 64 KiB map
    path = _write_store(str(tmp_path / 'grow.lmdb'), values, d=512, map_size=64 * 1024)
    store = PromptStore(path, expected_dim=512)
    assert len(store) == 200
    np.testing.assert_array_equal(store.get('k199'), values['k199'])


def test_writer_validates_shapes_and_existing_output(tmp_path, store_path):
    with pytest.raises(FileExistsError, match='overwrite'):
        PromptStoreWriter(store_path, {}, D)
    with PromptStoreWriter(str(tmp_path / 'x.lmdb'), {}, D) as writer:
        with pytest.raises(ValueError, match=r"'a'.*\(1, 3\)"):
            writer.write('a', np.zeros((1, 3), np.float32))
        with pytest.raises(ValueError, match='reserved'):
            writer.write(META_KEY, np.zeros((1, D), np.float32))
        writer.write('b', np.ones(D, np.float32))  # (d,) is one row
    assert PromptStore(str(tmp_path / 'x.lmdb')).get('b').shape == (1, D)


def test_failed_build_leaves_partial_and_resume_keeps_keys(tmp_path, values):
    path = str(tmp_path / 'resumable.lmdb')
    items = sorted(values.items())
    with pytest.raises(RuntimeError, match='boom'):
        with PromptStoreWriter(path, {'encoder': 'test'}, D) as writer:
            writer.write_batch(items[:10])
            raise RuntimeError('boom')
    assert not os.path.exists(path) and os.path.isdir(partial_path(path))
    with pytest.raises(FileNotFoundError, match=r'unfinished build.*--resume'):
        PromptStore(path).keys()

    with pytest.raises(ValueError, match='Cannot resume'):
        PromptStoreWriter(path, {'encoder': 'another'}, D, resume=True)
    with PromptStoreWriter(path, {'encoder': 'test'}, D, resume=True) as writer:
        assert writer.done_keys == {k for k, _ in items[:10]}
        writer.write_batch((k, v) for k, v in items if k not in writer)
    store = PromptStore(path)
    assert len(store) == len(values)
    for key, expected in values.items():
        np.testing.assert_array_equal(store.get(key), expected)


def test_overwrite_replaces_store(tmp_path, store_path):
    _write_store(store_path, {'only': np.ones((2, D), np.float32)}, overwrite=True)
    store = PromptStore(store_path)
    assert store.keys() == ['only'] and len(store) == 1


def _read_in_child(store, key, queue):
    queue.put((os.getpid(), store.get(key).tolist()))


def test_store_opened_in_parent_is_reopened_after_fork(store_path, values):
    store = PromptStore(store_path)
    store.get('img000')  # the handle is now open in this process
    ctx = mp.get_context('fork')
    queue = ctx.Queue()
    proc = ctx.Process(target=_read_in_child, args=(store, 'img007', queue))
    proc.start()
    pid, rows = queue.get(timeout=30)
    proc.join(timeout=30)
    assert pid != os.getpid()
    np.testing.assert_array_equal(np.asarray(rows, np.float32), values['img007'])
    np.testing.assert_array_equal(store.get('img007'), values['img007'])  # parent's handle still fine


@pytest.mark.parametrize(
    'key, parent',
    [('0001_s001', '0001'), ('img_a_s12', 'img_a'), ('baby', 'baby'), ('x_s', 'x_s'), ('_s001', '_s001')],
)
def test_parent_key(key, parent):
    assert parent_key(key) == parent


def test_parent_key_custom_and_disabled_pattern():
    assert parent_key('0001_s001', None) == '0001_s001'
    assert parent_key('0001-crop7', r'^(?P<parent>.+)-crop\d+$') == '0001'
