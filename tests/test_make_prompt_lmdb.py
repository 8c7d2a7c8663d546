"""Building prompt stores: ``build_prompt_store``, ``load_captions`` and ``scripts/make_prompt_lmdb.py``.

Uses the real open_clip ViT-B-32 architecture with RANDOM weights (``pretrained=None`` / ``--clip-pretrained
none``; seeded, so every process builds the same model), real LMDB, and tiny PNGs written to a temp dir.
"""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
import torch

from conftest import load_script
from pdnsr.data.prompt_store import PromptStore, partial_path
from pdnsr.prompts.build import build_prompt_store, load_captions

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / 'scripts' / 'make_prompt_lmdb.py'


def _load_script():
    return load_script('make_prompt_lmdb')


@pytest.fixture(scope='module')
def encoder(clip_encoder):
    """The session's random-weight encoder (seeded, so the same weights) with batches of 8."""
    encoder = copy.copy(clip_encoder)
    encoder.batch_size = 8
    return encoder


@pytest.fixture(scope='module')
def cli():
    return _load_script()


def _write_images(folder, n, seed=0):
    """n tiny BGR PNGs named img00.png ...; returns {key: RGB array}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rgb = {}
    for i in range(n):
        img = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f'img{i:02d}.png'), img)
        rgb[f'img{i:02d}'] = img[..., ::-1]
    return rgb


def test_load_captions_layouts(tmp_path, shared_data):
    sets = load_captions(shared_data / 'benchmarks' / 'captions.json')
    set5 = load_captions(shared_data / 'benchmarks' / 'captions.json', subset='Set5')
    assert sorted(set5) == ['baby', 'bird', 'butterfly', 'head', 'woman']
    assert len(sets) == 19 and all(len(c) >= 1 for c in sets.values())
    with pytest.raises(ValueError, match=r"no set 'Urban100'.*Set14"):
        load_captions(shared_data / 'benchmarks' / 'captions.json', subset='Urban100')

    flat = tmp_path / 'flat.json'
    flat.write_text(json.dumps({'a': ['one', ' two '], 'b': 'single', 'c': ['']}))
    assert load_captions(flat) == {'a': ['one', 'two'], 'b': ['single'], 'c': []}
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({'a': [1, 2]}))
    with pytest.raises(ValueError, match=r"caption of 'a' is int"):
        load_captions(bad)


def test_load_captions_checks_every_coco_entry(tmp_path):
    images = [{'id': 1, 'file_name': 'a.jpg'}, {'id': 2, 'file_name': 'b.jpg'}]
    annotations = [{'id': 10, 'image_id': 1, 'caption': 'a cat'}, {'id': 11, 'image_id': 2, 'caption': 'a dog'}]
    cases = (
        ({'images': images}, "looks like COCO captions (it has 'images') but lacks 'annotations'"),
        ({'annotations': annotations, 'info': {}}, "(it has 'annotations') but lacks 'images'"),
        ({'images': images, 'annotations': {'10': 'x'}}, "'annotations' must be a list, got dict"),
        ({'images': images + [{'id': 3}], 'annotations': annotations}, "images[2] needs an 'id' and a 'file_name'"),
        ({'images': images, 'annotations': annotations + [{'image_id': 2}]}, "annotations[2] needs an 'image_id' and"),
        ({'images': images, 'annotations': [dict(annotations[0], image_id=5)]}, 'refers to image_id 5, which no entry'),
        (
            {'images': images, 'annotations': [dict(annotations[0], caption=7)]},
            'annotations[0] (id 10) has a caption of type int',
        ),
    )
    path = tmp_path / 'captions_train2017.json'
    for data, expected in cases:
        path.write_text(json.dumps(data))
        with pytest.raises(ValueError) as err:
            load_captions(path)
        assert expected in str(err.value) and str(path) in str(err.value), str(err.value)
    path.write_text(json.dumps({'images': images, 'annotations': annotations, 'licenses': []}))
    assert load_captions(path) == {'a': ['a cat'], 'b': ['a dog']}


def test_coco_captions_to_text_store(tmp_path, encoder):
    coco = {
        'images': [
            {'id': 1, 'file_name': 'COCO_val2014_000000000001.jpg'},
            {'id': 7, 'file_name': 'nested/000000000007.jpg'},
            {'id': 9, 'file_name': '000000000009.jpg'},
        ],
        'annotations': [
            {'id': 10, 'image_id': 1, 'caption': 'A man riding a wave on a surfboard.'},
            {'id': 11, 'image_id': 7, 'caption': 'A plate of food.'},
            {'id': 12, 'image_id': 1, 'caption': 'A surfer in the ocean.  '},
        ],
    }
    path = tmp_path / 'captions_val2014.json'
    path.write_text(json.dumps(coco))
    captions = load_captions(path)
    assert captions == {
        'COCO_val2014_000000000001': ['A man riding a wave on a surfboard.', 'A surfer in the ocean.'],
        '000000000007': ['A plate of food.'],
    }

    out = str(tmp_path / 'coco_text.lmdb')
    assert build_prompt_store('text', out, encoder, captions=str(path), progress=False) == 2
    store = PromptStore(out, expected_dim=512)
    assert store.meta['kind'] == 'text' and store.meta['pretrained'] == 'none' and store.meta['view'] is None
    got = store.get('COCO_val2014_000000000001')
    assert got.shape == (2, 512) and got.dtype == np.float32
    np.testing.assert_allclose(got, encoder.encode_text(captions['COCO_val2014_000000000001']).numpy(), atol=1e-5)


def test_image_store_encodes_flipped_rgb(tmp_path, encoder):
    rgb = _write_images(tmp_path / 'hr', 3)
    out = str(tmp_path / 'image.lmdb')
    assert build_prompt_store('image', out, encoder, images_dir=str(tmp_path / 'hr'), progress=False) == 3
    store = PromptStore(out)
    assert store.keys() == ['img00', 'img01', 'img02'] and store.meta['view'] == 'flip'
    expected = encoder.encode_images([rgb[k] for k in store.keys()], view='flip').numpy()
    for i, key in enumerate(store.keys()):
        assert store.get(key).shape == (1, 512)
        np.testing.assert_allclose(store.get(key)[0], expected[i], atol=1e-5)


def test_mixed_store_keeps_keys_with_image_and_captions(tmp_path, encoder):
    rgb = _write_images(tmp_path / 'lr', 3)
    captions = {'img00': ['a red square', 'noise'], 'img02': ['static'], 'img99': ['no image for me']}
    out = str(tmp_path / 'mixed.lmdb')
    n = build_prompt_store(
        'mixed', out, encoder, captions=captions, images_dir=str(tmp_path / 'lr'), view='identity', progress=False
    )
    assert n == 2
    store = PromptStore(out)
    assert store.keys() == ['img00', 'img02'] and store.meta['kind'] == 'mixed' and store.meta['view'] == 'identity'
    expected = encoder.encode_mixed([captions['img00']], [rgb['img00']], view='identity')[0].numpy()
    np.testing.assert_allclose(store.get('img00'), expected, atol=1e-5)


def test_builder_refuses_existing_output_and_stale_partial(tmp_path, encoder):
    out = str(tmp_path / 'p.lmdb')
    build_prompt_store('text', out, encoder, captions={'a': ['x']}, progress=False)
    with pytest.raises(FileExistsError, match='--overwrite'):
        build_prompt_store('text', out, encoder, captions={'a': ['x']}, progress=False)
    assert build_prompt_store('text', out, encoder, captions={'b': ['y']}, overwrite=True, progress=False) == 1
    assert PromptStore(out).keys() == ['b']
    os.makedirs(partial_path(str(tmp_path / 'q.lmdb')))
    with pytest.raises(FileExistsError, match='--resume'):
        build_prompt_store('text', str(tmp_path / 'q.lmdb'), encoder, captions={'a': ['x']}, progress=False)
    with pytest.raises(ValueError, match='needs captions'):
        build_prompt_store('text', str(tmp_path / 'r.lmdb'), encoder, progress=False)


def test_cli_user_errors_exit_2_with_one_line(tmp_path, cli, capsys, monkeypatch):
    out = tmp_path / 'exists.lmdb'
    out.mkdir()
    assert cli.main(['--kind', 'text', '--captions', 'c.json', '--out', str(out), '--clip-pretrained', 'none']) == 2
    err = capsys.readouterr().err
    assert 'already exists' in err and '--overwrite' in err and 'Traceback' not in err and err.count('\n') == 1

    monkeypatch.setenv('HF_ENDPOINT', 'http://127.0.0.1:9')
    captions = tmp_path / 'c.json'
    captions.write_text(json.dumps({'a': ['a cat']}))  # the inputs are read before CLIP: they must be right here
    start = time.monotonic()
    code = cli.main(['--kind', 'text', '--captions', str(captions), '--out', str(tmp_path / 'n.lmdb'),
                     '--clip-pretrained', 'commonpool_s_s13m_b4k'])  # fmt: skip
    assert code == 2 and time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert '--clip-pretrained /path/to/open_clip_model.bin' in err and 'Traceback' not in err
    assert not (tmp_path / 'n.lmdb').exists() and not os.path.exists(partial_path(str(tmp_path / 'n.lmdb')))


@pytest.mark.parametrize(
    'case, message',
    [
        ('not_json', 'is not valid JSON'),
        ('no_captions', "kind 'text' needs captions"),
        ('empty_folder', 'Nothing to encode'),
        ('missing_folder', 'does not exist'),
        ('output_exists', 'already exists'),
        ('output_under_a_file', 'is not a folder'),
    ],
)
def test_cli_checks_inputs_and_output_before_loading_clip(tmp_path, cli, capsys, case, message):
    """Every input and the output are checked before CLIP loads: with weights that cannot load (a missing file),
    the message is still about the input, and nothing is written."""
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'exists.lmdb').mkdir()
    (tmp_path / 'bad.json').write_text('{"a": ')
    (tmp_path / 'file').write_text('x')
    good = tmp_path / 'good.json'
    good.write_text(json.dumps({'a': ['a cat']}))
    args = {
        'not_json': ['--kind', 'text', '--captions', str(tmp_path / 'bad.json')],
        'no_captions': ['--kind', 'text'],
        'empty_folder': ['--kind', 'image', '--images', str(tmp_path / 'empty')],
        'missing_folder': ['--kind', 'image', '--images', str(tmp_path / 'nope')],
        'output_exists': ['--kind', 'text', '--captions', str(good), '--out', str(tmp_path / 'exists.lmdb')],
        'output_under_a_file': ['--kind', 'text', '--captions', str(good), '--out', str(tmp_path / 'file' / 'p.lmdb')],
    }[case]
    if '--out' not in args:
        args += ['--out', str(tmp_path / 'p.lmdb')]
    before = sorted(os.listdir(tmp_path))
    assert cli.main([*args, '--clip-pretrained', str(tmp_path / 'missing_open_clip_model.bin')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and message in err and 'missing_open_clip_model' not in err, err
    assert sorted(os.listdir(tmp_path)) == before


def _entries(path):
    """Number of LMDB entries of a build in progress (0 if not started yet)."""
    if not os.path.isfile(os.path.join(path, 'data.mdb')):
        return 0
    try:
        env = lmdb.open(path, readonly=True, lock=False)
    except lmdb.Error:
        return 0
    try:
        return env.stat()['entries']
    finally:
        env.close()


@pytest.mark.slow
def test_killed_build_leaves_no_store_and_resume_matches_uninterrupted(tmp_path, encoder, cli):
    _write_images(tmp_path / 'imgs', 8)
    out = str(tmp_path / 'killed.lmdb')
    args = ['--kind', 'image', '--images', str(tmp_path / 'imgs'), '--out', out, '--clip-pretrained', 'none',
            '--batch-size', '1', '--no-progress']  # fmt: skip
    # Run as a user would, from the repository root; SIGKILL gives the builder no chance to clean up.
    # Same thread count as this process: float results may depend on it, and the values must match bit for bit.
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while _entries(partial_path(out)) < 3:  # the build record + 2 keys
            assert proc.poll() is None, f'builder ended before it was killed: {proc.stderr.read().decode()[-2000:]}'
            assert time.monotonic() < deadline, 'builder made no progress'
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert not os.path.exists(out)
    assert os.path.isdir(partial_path(out))
    done_before = _entries(partial_path(out)) - 1
    assert 2 <= done_before < 8

    assert cli.main(args + ['--resume']) == 0
    assert not os.path.exists(partial_path(out))
    reference = str(tmp_path / 'reference.lmdb')
    build_prompt_store('image', reference, encoder, images_dir=str(tmp_path / 'imgs'), batch_size=1, progress=False)
    resumed, uninterrupted = PromptStore(out), PromptStore(reference)
    assert resumed.keys() == uninterrupted.keys() and len(resumed) == 8
    for key in uninterrupted.keys():
        np.testing.assert_array_equal(resumed.get(key), uninterrupted.get(key))
