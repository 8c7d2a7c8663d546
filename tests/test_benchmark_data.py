"""The benchmarks' data (``--workdir``): what decides whether data and runs are reused, and what a bad source
image gets. The prompt-information experiment (pdnsr.tools.experiments.prompt_information, bench_prompt_information.py)
and bench_quality.py; and what a user error on a benchmark's command line gets (common.run_benchmark)."""

import ast
import os
import re
import sys
from types import SimpleNamespace

import commands
import cv2
import numpy as np
import pytest

from conftest import REPO_ROOT, load_script
from pdnsr.data.image_files import UnreadableImage
from pdnsr.data.prompt_store import PromptStore
from pdnsr.tools.experiments import prompt_information as pi


def test_another_clip_model_gets_its_own_stores_and_run_names(tmp_path):
    # Real open_clip architectures with random weights (pretrained none: nothing is downloaded here).
    rng = np.random.default_rng(0)
    photos = {f'p{i}': rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(2)}
    test = {'t': {'t0': rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)}}
    recipe = pi.Recipe(tile=32, batch=2, iters=4)
    names, stores = {}, {}
    for model in ('ViT-B-32', 'ViT-B-16'):  # the same embedding size (512): only the names can tell them apart
        data = pi.prepare(recipe, photos, test, str(tmp_path), model, 'none')
        stores[model] = data['train']['prompts']
        assert PromptStore(stores[model]).meta['model_name'] == model
        names[model] = pi.run_options(recipe, 'plus', 0, data['train'], data['prompt_dim'])['name']
    assert stores['ViT-B-32'] != stores['ViT-B-16'] and names['ViT-B-32'] != names['ViT-B-16']


def source_folders(root, names, rng, size=64):
    """``root/<name>/x.png`` for each name: a random ``size`` px image (one source of a benchmark's data)."""
    for name in names:
        (root / name).mkdir(parents=True)
        cv2.imwrite(str(root / name / 'x.png'), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return {name: str(root / name) for name in names}


def test_benchmark_data_is_keyed_on_its_sources(tmp_path):
    """bench_prompt_information.py (and bench_router.py, which shares its data) prepares its data in a folder named
    after the source folders and the data recipe: other images in the same --workdir are never the old ones."""
    bpi = load_script('bench_prompt_information', 'benchmarks')
    rng = np.random.default_rng(0)
    for root in ('a', 'b'):
        source_folders(tmp_path / root, (*bpi.TRAIN_SETS, *bpi.TEST_SETS), rng)
    runs = {}
    for root in ('a', 'b', 'a'):
        args = bpi.parse_args(['--quick', '--workdir', str(tmp_path / 'work'), '--train-data', str(tmp_path / root),
                               '--bench-data', str(tmp_path / root)])  # fmt: skip
        data, _ = bpi.load_data(args)
        runs.setdefault(root, []).append(data['train']['hr'])
    assert runs['a'][0] == runs['a'][1] != runs['b'][0]  # the same sources reuse their folder; others get their own


def test_quality_benchmark_data_is_keyed_on_its_sources_and_made_whole(tmp_path):
    bq = load_script('bench_quality', 'benchmarks')
    rng = np.random.default_rng(0)
    sources = {root: source_folders(tmp_path / root, ('BSD68', 'Set5'), rng, 128) for root in ('a', 'b')}
    args = SimpleNamespace(quick=True, crop=128, scale=2, sigma=0.0, clip_pretrained='none', val_sets=['Set5'])

    def prepare(root):
        train, bench = {'BSD68': sources[root]['BSD68']}, {'Set5': sources[root]['Set5']}
        return bq.prepare_data(args, train, bench, str(tmp_path / 'work'))

    a, b = prepare('a'), prepare('b')
    assert a['hr'] != b['hr'] and a['test']['Set5']['hr'] != b['test']['Set5']['hr']
    assert prepare('a')['hr'] == a['hr'] and a['n_sub'] == 1  # --quick: a 96 px crop, one 96 px sub-image
    # An interrupted preparation (no done.json, a partial folder) is made again from scratch, not reused as it is.
    train_dir = os.path.dirname(a['hr'])
    os.remove(os.path.join(train_dir, 'done.json'))
    for sub in ('HR_sub', 'LR_sub'):
        os.remove(os.path.join(train_dir, sub, 'BSD68_x_s001.png'))
    again = prepare('a')
    assert again['n_sub'] == 1 and os.path.exists(os.path.join(train_dir, 'done.json'))
    assert cv2.imread(os.path.join(again['lr'], 'BSD68_x_s001.png')).shape == (48, 48, 3)


def test_a_truncated_source_image_is_refused_by_name(tmp_path):
    bpi, bq = load_script('bench_prompt_information', 'benchmarks'), load_script('bench_quality', 'benchmarks')
    sources = source_folders(tmp_path / 'src', (*bpi.TRAIN_SETS, *bpi.TEST_SETS), np.random.default_rng(0), 128)
    bad = tmp_path / 'src' / 'BSD68' / 'x.png'
    bad.write_bytes(bad.read_bytes()[:200])  # cut short: its PNG data stops before the IEND chunk
    args = bpi.parse_args(['--quick', '--workdir', str(tmp_path / 'w1'), '--train-data', str(tmp_path / 'src'),
                           '--bench-data', str(tmp_path / 'src')])  # fmt: skip
    with pytest.raises(UnreadableImage, match=f'image {bad} is truncated'):
        bpi.load_data(args)
    args = SimpleNamespace(quick=True, crop=128, scale=2, sigma=0.0, clip_pretrained='none', val_sets=['Set5'])
    with pytest.raises(UnreadableImage, match=f'image {bad} is truncated'):
        bq.prepare_data(args, {'BSD68': sources['BSD68']}, {'Set5': sources['Set5']}, str(tmp_path / 'w2'))
    assert not list((tmp_path / 'w2').glob('*/done.json'))  # nothing counts as prepared


@pytest.mark.parametrize('script', ['bench_prompt_information.py', 'bench_quality.py'])
def test_a_bad_input_on_the_command_line_is_one_error_line(tmp_path, script):
    # Through the real command, as a user runs it: a truncated source image and a --workdir that is a file each get
    # one line on stderr naming them, exit status 2, no traceback, and no data counted as prepared.
    source_folders(tmp_path / 'src', ('BSD68', 'SunHays80', 'Set5', 'Set14'), np.random.default_rng(0), 128)
    bad = tmp_path / 'src' / 'SunHays80' / 'x.png'
    bad.write_bytes(bad.read_bytes()[:200])
    (tmp_path / 'a_file').write_text('not a folder')
    cases = {
        str(tmp_path / 'work'): f'image {bad} is truncated',
        str(tmp_path / 'a_file'): '--workdir .* is not a folder',
    }
    for workdir, message in cases.items():
        command = [sys.executable, str(REPO_ROOT / 'benchmarks' / script), '--quick', '--workdir', workdir]
        command += ['--train-data', str(tmp_path / 'src'), '--bench-data', str(tmp_path / 'src')]
        proc = commands.run(command, REPO_ROOT)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert 'Traceback' not in proc.stderr and re.fullmatch(f'{script}: error: .*{message}.*', lines[-1]), lines
    assert not list((tmp_path / 'work').glob('**/done.json'))


def test_every_benchmark_script_ends_in_run_benchmark():
    # The one error rule of the test above, for every script: its __main__ block hands main to run_benchmark.
    scripts = {}
    for path in sorted((REPO_ROOT / 'benchmarks').glob('*.py')):
        for node in ast.parse(path.read_text(encoding='utf-8')).body:
            if isinstance(node, ast.If) and "__name__ == '__main__'" in ast.unparse(node.test):
                scripts[path.name] = ast.unparse(node.body[-1])
    assert len(scripts) >= 8, scripts
    assert {
        name: call for name, call in scripts.items() if not re.fullmatch(r'(common\.)?run_benchmark\(main\)', call)
    } == {}
