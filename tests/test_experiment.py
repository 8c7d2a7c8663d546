"""pdnsr.experiments.prompt_information: what decides whether a work folder's data and runs are reused."""

import cv2
import numpy as np

from conftest import load_script
from pdnsr.data.prompt_store import PromptStore
from pdnsr.experiments import prompt_information as pi


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


def test_benchmark_data_is_keyed_on_its_sources(tmp_path):
    """bench_prompt_information.py (and bench_router.py, which shares its data) prepares its data in a folder named
    after the source folders and the data recipe: other images in the same --workdir are never the old ones."""
    bpi = load_script('bench_prompt_information', 'benchmarks')
    rng = np.random.default_rng(0)
    for root in ('a', 'b'):
        for name in (*bpi.TRAIN_SETS, *bpi.TEST_SETS):
            (tmp_path / root / name).mkdir(parents=True)
            cv2.imwrite(str(tmp_path / root / name / 'x.png'), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    runs = {}
    for root in ('a', 'b', 'a'):
        args = bpi.parse_args(['--quick', '--workdir', str(tmp_path / 'work'), '--train-data', str(tmp_path / root),
                               '--bench-data', str(tmp_path / root)])  # fmt: skip
        base = pi.Recipe(degradations=args.degradations, **{n: getattr(args, n) for n in bpi.RECIPE_ARGS})
        data, _ = bpi.load_data(args, base)
        runs.setdefault(root, []).append(data['train']['hr'])
    assert runs['a'][0] == runs['a'][1] != runs['b'][0]  # the same sources reuse their folder; others get their own
