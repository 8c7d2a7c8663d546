"""Bad input through the real commands: one table, one row per mistake a user can make, and what the command does.

Each row runs one command as a user types it, in a subprocess of this checkout's Python (``python -m
pdnsr.tools.infer``, ``python -m pdnsr.tools.export.cli``, ``python pdnsr/test.py -opt``,
``python scripts/data_preparation/prepare_coco.py``, ``python scripts/convert_dcm_bank.py``), on one bad input
written into the row's own folder. What a row expects:

- ``refused`` (most rows): exit status 2; the last line on stderr is ``<command>: error: ...`` and names the
  culprit (the file, key, option or number); the outputs the command was asked to write are as they were before
  (absent, or the same bytes);
- ``skipped``: the documented rule of the data preparation for an unusable image among others: one line naming it,
  counted in the summary, exit 0, and exactly the other images' outputs written;
- ``partial``: the documented rule of ``pdnsr-infer`` for one bad image in a folder: one line naming it, the others
  written, exit 1;
- ``converted``: an input ``docs/inference.md`` says is converted (greyscale, alpha, 16-bit; any size, 1x1
  included): exit 0, and the output is a 3-channel 8-bit image of twice the input's size.

In every row: no ``Traceback`` anywhere in the output and no temporary file left under the outputs.

The rows share one tiny random-weight EDSR+ (8 features, x2, prompt_dim 512) and ``conftest.paired_data`` (its
text prompt store is built by the real builder from open_clip's ViT-B-32 with random weights). Every subprocess pays
the import of torch and basicsr (about 6 s of CPU), so the first test that asks for an outcome starts every selected
row, a few at a time, and each test then checks its own row. The rows of the issue's list run in the inner loop; the
other mistakes are marked slow (CI runs them).
"""

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from pdnsr import options
from pdnsr.archs.network_options import build_network
from pdnsr.data.prompt_store import META_KEY
from pdnsr.inference import read_network_options

PYTHON = sys.executable
# command -> (argv before the row's arguments, the name its error lines start with)
COMMANDS = {
    'pdnsr-infer': ([PYTHON, '-m', 'pdnsr.tools.infer'], 'pdnsr-infer'),
    'pdnsr-export': ([PYTHON, '-m', 'pdnsr.tools.export.cli'], 'pdnsr-export'),
    'prepare_coco.py': (
        [PYTHON, str(REPO_ROOT / 'scripts' / 'data_preparation' / 'prepare_coco.py')],
        'prepare_coco.py',
    ),
    'pdnsr/test.py': ([PYTHON, str(REPO_ROOT / 'pdnsr' / 'test.py'), '-opt'], 'pdnsr-test'),
    'convert_dcm_bank.py': ([PYTHON, str(REPO_ROOT / 'scripts' / 'convert_dcm_bank.py')], 'convert_dcm_bank.py'),
}
NETWORK = dict(num_feat=8, num_block=2)  # EDSR+ x2 with two DCMs
COCO = ['--crop-size', '32', '--min-size', '32', '--scales', '2', '--workers', '1']  # one 32x32 crop per 32x32 image
LONG_PROMPT = ('a small grey cat sleeping on a red woollen blanket beside a window ' * 150)[:10_000]
TIMEOUT_S = 240


@dataclass(frozen=True)
class Case:
    """One row: ``command`` run with ``args`` after ``files`` were written into the row's folder.

    ``args``, ``culprit`` and the keys of ``written`` are templates: ``{dir}`` is the row's folder, ``{opt}``,
    ``{weights}``, ``{image}``, ``{coco}``, ``{hr}``, ``{lr}``, ``{store}``, ``{key}`` the shared inputs
    (:func:`world`). ``files``: name in the row's folder -> writer ``(path, placeholders)``. ``outputs``: what the
    command writes (checked unchanged for a refusal). ``written``: for the rows that write, every image file expected
    under ``outputs`` (relative to the row's folder) and its (H, W, C).
    """

    id: str
    command: str
    args: tuple
    culprit: tuple = ()
    files: dict = field(default_factory=dict)
    outputs: tuple = ('out',)
    expect: str = 'refused'  # 'refused' | 'skipped' | 'partial' | 'converted'
    written: dict = None
    needs: str = None  # a module the row needs (the deploy extra's onnx)
    slow: bool = False  # beyond the issue's list: CI runs it, the inner loop (-m "not slow") does not


# ---------------------------------------------------------------------------------------------------------- writers
def _pixels(h, w, channels=3, dtype=np.uint8, seed=0):
    top = np.iinfo(dtype).max
    img = np.random.default_rng(seed).integers(0, top, (h, w, channels), dtype=dtype, endpoint=True)
    return img[:, :, 0] if channels == 1 else img


def image(h, w, channels=3, dtype=np.uint8):
    """Writer of a random image file (cv2 picks the format from the suffix)."""

    def write(path, ctx):
        assert cv2.imwrite(str(path), _pixels(h, w, channels, dtype))

    return write


def cut(writer, fraction=0.5):
    """``writer``'s file cut to ``fraction`` of its bytes, as an interrupted download or copy leaves it."""

    def write(path, ctx):
        writer(path, ctx)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: int(len(data) * fraction)])

    return write


def text(content):
    def write(path, ctx):
        Path(path).write_text(content)

    return write


def json_file(obj):
    return text(json.dumps(obj))


def folder(**entries):
    """A folder holding ``entries`` (name -> writer); ``_copy_of='coco'`` starts from a copy of a shared folder."""

    source = entries.pop('_copy_of', None)

    def write(path, ctx):
        if source:
            shutil.copytree(ctx[source], path)
        else:
            os.makedirs(path)
        for name, writer in entries.items():
            writer(Path(path) / name, ctx)

    return write


def saved(make):
    """A file written by ``torch.save(make())``."""

    def write(path, ctx):
        torch.save(make(), path)

    return write


def store_copy(change):
    """A copy of the shared text prompt store, then ``change(txn, key)`` in one write transaction (py-lmdb)."""

    def write(path, ctx):
        shutil.copytree(ctx['store'], path)
        env = lmdb.open(str(path))
        try:
            with env.begin(write=True) as txn:
                change(txn, ctx['key'].encode())
        finally:
            env.close()

    return write


def option_file(store='{store}', **network):
    """A ``pdnsr/test.py`` option file of the tiny EDSR+ (``network``: changed ``network_g`` entries) on the paired
    data, its prompts from ``store``."""

    def write(path, ctx):
        network_g = options.network('EDSRPlus', 2, **{**NETWORK, **network})
        data = options.dataset('bad', ctx['hr'], ctx['lr'], store.format(**ctx), prompted=True)
        opt = options.test_options('bad_input', network_g, {'test_1': data}, 2, ctx['weights'])
        options.write_options(opt, path)

    return write


def not_pdnsr_onnx(path, ctx):
    """A valid ONNX graph (an Identity) that pdnsr-export did not write: no 'pdnsr' metadata."""
    import onnx
    from onnx import TensorProto, helper

    image_in = helper.make_tensor_value_info('image', TensorProto.FLOAT, [1, 3, 'h', 'w'])
    image_out = helper.make_tensor_value_info('output', TensorProto.FLOAT, [1, 3, 'h', 'w'])
    graph = helper.make_graph([helper.make_node('Identity', ['image'], ['output'])], 'other', [image_in], [image_out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    model.ir_version = 8  # what any onnxruntime of the last years reads
    onnx.save(model, path)


def infer(*extra, weights='{weights}', input='{image}'):
    return ('--opt', '{opt}', '--weights', weights, '--input', input, '--output', '{dir}/out', *extra)


def prepare(*extra, images='{dir}/images'):
    return ('--images', images, '--output', '{dir}/out', *COCO, *extra)


def coco_captions(images, annotations):
    return json_file({'images': images, 'annotations': annotations})


def sr(h, w):
    """What x2 super-resolution of an h x w image writes: 3 channels (shape checked as uint8)."""
    return (2 * h, 2 * w, 3)


def converted(row_id, h, w, *extra, pictures=('pdnsr',), **pixels):
    """A ``converted`` row: pdnsr-infer (with ``extra``) on one h x w image file written by ``image(h, w,
    **pixels)``; it writes ``out/in_<picture>.png`` of twice that size for each of ``pictures``."""
    return Case(
        row_id,
        'pdnsr-infer',
        infer(*extra, input='{dir}/in.png'),
        files={'in.png': image(h, w, **pixels)},
        expect='converted',
        written={f'out/in_{picture}.png': sr(h, w) for picture in pictures},
    )


# ------------------------------------------------------------------------------------------------------------ table
CASES = [
    # ---- data preparation: captions and image folders are checked before any image work
    Case(
        'captions-not-json',
        'prepare_coco.py',
        prepare('--captions', '{dir}/captions.json', '--prompts', '--clip-pretrained', 'none', images='{coco}'),
        ('{dir}/captions.json', 'not valid JSON'),
        files={'captions.json': text('{"images": [{"id": 1, "file_name": "good.png"}], "annotations": [')},
    ),
    Case(
        'captions-without-annotations',
        'prepare_coco.py',
        prepare('--captions', '{dir}/captions.json', '--prompts', '--clip-pretrained', 'none', images='{coco}'),
        ('{dir}/captions.json', "lacks 'annotations'"),
        files={'captions.json': json_file({'images': [{'id': 1, 'file_name': 'good.png'}]})},
    ),
    Case(
        'captions-annotation-without-caption',
        'prepare_coco.py',
        prepare('--captions', '{dir}/captions.json', '--prompts', '--clip-pretrained', 'none', images='{coco}'),
        ('{dir}/captions.json', 'annotations[1]', "'caption'"),
        files={
            'captions.json': coco_captions(
                [{'id': 1, 'file_name': 'good.png'}],
                [{'id': 1, 'image_id': 1, 'caption': 'a picture'}, {'id': 2, 'image_id': 1}],
            )
        },
    ),
    Case('empty-image-folder', 'prepare_coco.py', prepare(), ('no images', '{dir}/images'), files={'images': folder()}),
    Case(
        'truncated-jpeg-among-images',
        'prepare_coco.py',
        prepare(),
        ('skipped: image {dir}/images/bad.jpg is truncated',),
        files={'images': folder(_copy_of='coco', **{'bad.jpg': cut(image(48, 48))})},
        expect='skipped',
        written={'out/GT/good_s001.png': (32, 32, 3), 'out/LRx2/good_s001.png': (16, 16, 3)},
    ),
    Case(
        'truncated-jpeg-among-images-strict',
        'prepare_coco.py',
        prepare('--strict'),
        ('image {dir}/images/bad.jpg is truncated', '--strict'),
        files={'images': folder(_copy_of='coco', **{'bad.jpg': cut(image(48, 48))})},  # 'bad' sorts before 'good'
        written={},  # stopped at the first image: no crop at all
    ),
    Case(
        '16-bit-png-among-images',
        'prepare_coco.py',
        prepare(),
        ('skipped: image {dir}/images/deep.png', 'uint16', 'convert it to 8 bits'),
        files={'images': folder(_copy_of='coco', **{'deep.png': image(48, 48, dtype=np.uint16)})},
        expect='skipped',
        written={'out/GT/good_s001.png': (32, 32, 3), 'out/LRx2/good_s001.png': (16, 16, 3)},
    ),
    # ---- prompt stores and option files, through pdnsr/test.py: refused before basicsr creates results/<name>
    Case(
        'store-truncated-value',
        'pdnsr/test.py',
        ('{dir}/test.yml',),
        ('{dir}/prompts.lmdb', "key '{key}'", '100 bytes'),
        files={
            'prompts.lmdb': store_copy(lambda txn, key: txn.put(key, bytes(txn.get(key))[:100])),
            'test.yml': option_file(store='{dir}/prompts.lmdb'),
        },
        outputs=('results', 'experiments'),
    ),
    Case(
        'store-without-metadata',
        'pdnsr/test.py',
        ('{dir}/test.yml',),
        ('{dir}/prompts.lmdb', META_KEY),
        files={
            'prompts.lmdb': store_copy(lambda txn, key: txn.delete(META_KEY.encode())),
            'test.yml': option_file(store='{dir}/prompts.lmdb'),
        },
        outputs=('results', 'experiments'),
    ),
    Case(
        'store-of-another-dimension',
        'pdnsr/test.py',
        ('{dir}/test.yml',),
        ('{store}', 'size 512', 'prompt_dim is 256'),
        files={'test.yml': option_file(prompt_dim=256)},
        outputs=('results', 'experiments'),
    ),
    Case(
        'option-unknown-dcm-key',
        'pdnsr/test.py',
        ('{dir}/test.yml',),
        ("['use_atention']", 'network_g.dcm'),
        files={'test.yml': option_file(dcm={'use_atention': False})},
        outputs=('results', 'experiments'),
    ),
    Case(
        'option-boolean-as-string',
        'pdnsr/test.py',
        ('{dir}/test.yml',),
        ('use_attention', "'false' (a str)"),
        files={'test.yml': option_file(dcm={'use_attention': 'false'})},
        outputs=('results', 'experiments'),
    ),
    # ---- pdnsr-infer: weights, prompts, options
    Case(
        'prompt-of-10000-characters',
        'pdnsr-infer',
        infer('--prompt', LONG_PROMPT, '--clip-pretrained', 'none'),
        ('--prompt has', 'tokens (10000 characters)', 'at most 77 tokens'),
    ),
    # ---- pdnsr-export: the same prompt refused before anything is loaded
    Case(
        'export-prompt-of-10000-characters',
        'pdnsr-export',
        ('--opt', '{opt}', '--weights', '{weights}', '--output', '{dir}/model.onnx', '--prompt', LONG_PROMPT),
        ('--prompt has', 'tokens (10000 characters)', 'at most 77 tokens'),
        outputs=('.',),  # the whole row folder: nothing at all is written
    ),
    Case('weights-missing', 'pdnsr-infer', infer(weights='{dir}/net_g.pth'), ('{dir}/net_g.pth', 'does not exist')),
    Case(
        'weights-a-png',
        'pdnsr-infer',
        infer(weights='{dir}/net_g.png'),
        ('{dir}/net_g.png', 'not a PyTorch checkpoint (a PNG image)'),
        files={'net_g.png': image(8, 8)},
    ),
    Case(
        'weights-a-tensor',
        'pdnsr-infer',
        infer(weights='{dir}/net_g.pth'),
        ('{dir}/net_g.pth', 'holds a Tensor'),
        files={'net_g.pth': saved(lambda: torch.randn(8, 8))},
        slow=True,
    ),
    Case(
        'weights-of-another-network',
        'pdnsr-infer',
        infer(weights='{dir}/net_g.pth'),
        ('{dir}/net_g.pth', 'none of the parameter names of EDSRPlus'),
        files={
            'net_g.pth': saved(lambda: {'params': {'encoder.0.weight': torch.randn(4, 3), 'head.bias': torch.randn(2)}})
        },
    ),
    Case(
        'onnx-not-from-pdnsr-export',
        'pdnsr-infer',
        ('--onnx', '{dir}/model.onnx', '--input', '{image}', '--output', '{dir}/out'),
        ('{dir}/model.onnx', 'not a pdnsr graph'),
        files={'model.onnx': not_pdnsr_onnx},
        needs='onnx',
    ),
    Case(
        'input-truncated-png',
        'pdnsr-infer',
        infer(input='{dir}/in.png'),
        ('{dir}/in.png', 'truncated'),
        files={'in.png': cut(image(24, 20))},
    ),
    Case(
        'input-truncated-png-in-a-folder',
        'pdnsr-infer',
        infer(input='{dir}/in'),
        ('{dir}/in/bad.png', 'truncated', 'skipped'),
        files={'in': folder(**{'bad.png': cut(image(24, 20)), 'good.png': image(12, 10)})},
        expect='partial',
        written={'out/good_pdnsr.png': sr(12, 10)},
        slow=True,
    ),
    Case(
        'captions-missing-file',
        'pdnsr-infer',
        infer('--captions', '{dir}/captions.json'),
        ('{dir}/captions.json', 'does not exist'),
        slow=True,
    ),
    Case(
        'captions-lack-the-input',
        'pdnsr-infer',
        infer('--captions', '{dir}/captions.json', '--clip-pretrained', 'none'),
        ('{image}', "no caption for key 'photo'", '{dir}/captions.json'),
        files={'captions.json': json_file({'another_photo': ['a cat']})},
        slow=True,
    ),
    Case('tile-negative', 'pdnsr-infer', infer('--tile', '-8'), ('--tile', '-8'), slow=True),
    Case('fp16-on-cpu', 'pdnsr-infer', infer('--fp16', '--device', 'cpu'), ('--fp16', 'CUDA'), slow=True),
    Case(
        'output-is-a-file',
        'pdnsr-infer',
        infer(),
        ('--output {dir}/out', 'not a folder'),
        files={'out': text('x')},
        slow=True,
    ),
    Case(
        'convert-a-png',
        'convert_dcm_bank.py',
        ('{dir}/net_g.png', '{dir}/out.pth'),
        ('{dir}/net_g.png', 'not a PyTorch checkpoint'),
        files={'net_g.png': image(8, 8)},
        outputs=('out.pth',),
        slow=True,
    ),
    # ---- inputs docs/inference.md says are converted, and the smallest sizes
    converted('image-1x1', 1, 1),
    converted(
        'image-1-pixel-high-with-attention',
        1,
        20,
        '--save-attention',
        pictures=('pdnsr', 'attention_dcm0', 'attention_dcm1'),
    ),
    converted('image-greyscale', 12, 10, channels=1),
    converted('image-rgba', 12, 10, channels=4),
    converted('image-16-bit', 12, 10, dtype=np.uint16),
]
CASES_BY_ID = {case.id: case for case in CASES}


def test_the_table_is_what_the_issue_asks_for():
    """At least 20 rows, most of them refusals, every id unique, every command of the table used."""
    assert len(CASES_BY_ID) == len(CASES) >= 20
    refused = [case for case in CASES if case.expect == 'refused']
    assert len(refused) > 2 * len(CASES) // 3
    assert {case.command for case in CASES} == set(COMMANDS)


# ----------------------------------------------------------------------------------------------------------- running
@pytest.fixture(scope='module')
def world(tmp_path_factory, paired_data):
    """The inputs every row shares: the tiny model, one good image, a COCO image folder, the paired data."""
    root = tmp_path_factory.mktemp('world')
    opt = root / 'edsr_plus.yml'
    options.write_options({'network_g': options.network('EDSRPlus', 2, **NETWORK)}, opt)
    torch.manual_seed(0)
    weights = root / 'edsr_plus.pth'
    state = build_network(read_network_options(opt)).state_dict()
    torch.save({'params': state, 'params_ema': state}, weights)
    photo = root / 'photo.png'
    image(24, 20)(photo, None)
    coco = root / 'coco'
    folder(**{'good.png': image(32, 32)})(coco, None)
    return {
        'opt': str(opt),
        'weights': str(weights),
        'image': str(photo),
        'coco': str(coco),
        'hr': paired_data['hr'],
        'lr': paired_data['lr'],
        'store': paired_data['text_store'],
        'key': paired_data['keys'][0],
    }


@dataclass
class Outcome:
    case: Case
    folder: Path
    ctx: dict
    before: dict
    returncode: int = None
    stdout: str = ''
    stderr: str = ''


def snapshot(path):
    """What a path holds: None (absent), the bytes of a file, or {relative path: bytes} of a folder."""
    path = Path(path)
    if path.is_file():
        return path.read_bytes()
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob('*')) if p.is_file()}
    return None


def _prepare(case, root, world):
    folder_path = root / case.id
    folder_path.mkdir()
    ctx = dict(world, dir=str(folder_path))
    for name, writer in case.files.items():
        writer(folder_path / name, ctx)
    return Outcome(case, folder_path, ctx, {out: snapshot(folder_path / out) for out in case.outputs})


def _run(outcome):
    prefix, _ = COMMANDS[outcome.case.command]
    argv = prefix + [arg.format(**outcome.ctx) for arg in outcome.case.args]
    # Outputs of basicsr's pipeline go under PDNSR_ROOT, the row's folder; one thread each: the rows run side by side.
    env = dict(os.environ, PDNSR_ROOT=str(outcome.folder), OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    env.pop('PDNSR_DEBUG', None)
    proc = subprocess.run(
        argv, cwd=outcome.folder, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL
    )
    outcome.returncode, outcome.stdout, outcome.stderr = proc.returncode, proc.stdout, proc.stderr
    return outcome


@pytest.fixture(scope='module')
def outcomes(request, world, tmp_path_factory):
    """{row id: Outcome} of every row selected in this session, run a few at a time."""
    selected = [
        item.callspec.params['case_id']
        for item in request.session.items
        if item.module is request.module and hasattr(item, 'callspec') and 'case_id' in item.callspec.params
    ]
    root = tmp_path_factory.mktemp('rows')
    todo = [_prepare(CASES_BY_ID[i], root, world) for i in selected if _needs_met(CASES_BY_ID[i])]
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        return {outcome.case.id: outcome for outcome in pool.map(_run, todo)}


def _needs_met(case):
    if case.needs is None:
        return True
    try:
        __import__(case.needs)
    except ImportError:
        return False
    return True


def _lines(stream):
    """Non-empty lines; a progress bar's carriage returns split lines too."""
    return [line.strip() for line in re.split(r'[\r\n]+', stream) if line.strip()]


def _images_under(folder_path, outputs):
    """{path relative to the row's folder: (H, W, C)} of every image file under ``outputs``, decoded as 8-bit."""
    found = {}
    for out in outputs:
        for path in sorted(p for p in (folder_path / out).rglob('*.png') if p.is_file()):
            img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            assert img is not None and img.dtype == np.uint8, f'{path}: not an 8-bit image'
            found[str(path.relative_to(folder_path))] = img.shape if img.ndim == 3 else (*img.shape, 1)
    return found


@pytest.mark.parametrize(
    'case_id', [pytest.param(case.id, marks=[pytest.mark.slow] if case.slow else []) for case in CASES]
)
def test_bad_input(case_id, outcomes):
    case = CASES_BY_ID[case_id]
    if case.needs:
        pytest.importorskip(case.needs)
    outcome = outcomes[case_id]
    ctx, output = outcome.ctx, outcome.stdout + outcome.stderr
    report = f'exit status {outcome.returncode}; stderr:\n{outcome.stderr[-3000:]}'
    culprit = [c.format(**ctx) for c in case.culprit]
    status = {'refused': 2, 'skipped': 0, 'partial': 1, 'converted': 0}[case.expect]

    assert outcome.returncode == status, report
    assert 'Traceback' not in output, report
    lines = _lines(outcome.stderr)
    if case.expect == 'refused':
        last = lines[-1] if lines else ''
        assert last.startswith(f'{COMMANDS[case.command][1]}: error: '), report
        missing = [c for c in culprit if c not in last]
        assert not missing, f'{missing} not in the error line {last!r}'
    elif culprit:  # skipped / partial: the one line that names the bad input
        named = [line for line in lines if all(c in line for c in culprit)]
        assert len(named) == 1, report
    if case.expect == 'skipped':
        assert '1 skipped' in outcome.stdout, outcome.stdout
    if case.expect == 'partial':
        assert lines[-1].endswith('1 failed'), report

    assert not [p for out in case.outputs for p in (outcome.folder / out).rglob('.tmp-*')], 'temporary files left'
    if case.written is None:
        for out in case.outputs:
            assert snapshot(outcome.folder / out) == outcome.before[out], f'{out} was changed by the failed run'
    else:
        expected = {name.format(**ctx): shape for name, shape in case.written.items()}
        assert _images_under(outcome.folder, case.outputs) == expected
