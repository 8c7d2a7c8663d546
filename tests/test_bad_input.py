"""Bad input through the real commands: one table, one row per mistake a user can make, and what the command does.

Each row runs one command as a user types it (:data:`COMMANDS`: ``python -m pdnsr.tools.infer``, ``python
pdnsr/train.py -opt``, ``python scripts/convert_dcm_bank.py``...), in a process of its own
(:func:`commands.run`), on one bad input written into the row's own folder. What a row expects:

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
text prompt store is built by the real builder from open_clip's ViT-B-32 with random weights). The first test that
asks for an outcome starts every selected row, a few at a time, and each test then checks its own row. One row of
each kind runs in the inner loop; the others are marked slow (CI runs them).
"""

import json
import os
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import commands
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
from pdnsr.utils.visualization import colour_bar

PYTHON = sys.executable
SCRIPTS = REPO_ROOT / 'scripts'
# command -> (argv before the row's arguments, the name its error lines start with)
COMMANDS = {
    'pdnsr-infer': ([PYTHON, '-m', 'pdnsr.tools.infer'], 'pdnsr-infer'),
    'pdnsr-export': ([PYTHON, '-m', 'pdnsr.tools.export.cli'], 'pdnsr-export'),
    'prepare_coco.py': ([PYTHON, str(SCRIPTS / 'data_preparation' / 'prepare_coco.py')], 'prepare_coco.py'),
    'prepare_benchmark.py': (
        [PYTHON, str(SCRIPTS / 'data_preparation' / 'prepare_benchmark.py')],
        'prepare_benchmark.py',
    ),
    'make_prompt_lmdb.py': ([PYTHON, str(SCRIPTS / 'make_prompt_lmdb.py')], 'make_prompt_lmdb.py'),
    'pdnsr/train.py': ([PYTHON, str(REPO_ROOT / 'pdnsr' / 'train.py'), '-opt'], 'pdnsr-train'),
    'pdnsr/test.py': ([PYTHON, str(REPO_ROOT / 'pdnsr' / 'test.py'), '-opt'], 'pdnsr-test'),
    'convert_dcm_bank.py': ([PYTHON, str(SCRIPTS / 'convert_dcm_bank.py')], 'convert_dcm_bank.py'),
    'visualize_attention.py': ([PYTHON, str(SCRIPTS / 'visualize_attention.py')], 'visualize_attention'),
}
RUNS = ('experiments', 'results', 'tb_logger')  # what basicsr's pipelines create (or archive) under PDNSR_ROOT
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
    slow: bool = False  # beyond the list: CI runs it, the inner loop (-m "not slow") does not


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


def train_option_file(store='{store}', lr='{lr}', scale=2, **network):
    """A ``pdnsr/train.py`` option file: the tiny EDSR+ for 2 iterations on the paired data (``lr``: its LR folder),
    its prompts from ``store``; ``scale`` is the option file's, the network's stays 2 unless ``network`` says."""

    def write(path, ctx):
        network_g = options.network('EDSRPlus', 2, **{**NETWORK, **network})
        data = options.train_dataset('bad', ctx['hr'], lr.format(**ctx), 32, 2, store.format(**ctx), True)
        opt = options.train_options('bad_input_train', network_g, data, scale, 2, 1e-3, print_freq=1)
        options.write_options(opt, path)

    return write


def older_run(name='bad_input_train'):
    """What an earlier run of the same name left under ``experiments/``: a refused run must not archive it."""
    return folder(**{name: folder(**{'models': folder(**{'net_g_2.pth': text('an earlier run')})})})


def weights_with(value):
    """The shared weights with one ``value`` (NaN, inf) in the first tensor of ``params`` and ``params_ema``."""

    def write(path, ctx):
        checkpoint = torch.load(ctx['weights'], weights_only=True)
        for key in ('params', 'params_ema'):
            state = {k: v.clone() for k, v in checkpoint[key].items()}
            state[next(iter(state))].view(-1)[0] = value
            checkpoint[key] = state
        torch.save(checkpoint, path)

    return write


def store_without_first_key(path, ctx):
    """A text prompt store built by the real builder for every image but the first."""
    from pdnsr.inference import cached_prompt_encoder
    from pdnsr.prompts.build import build_prompt_store
    from pdnsr.tools.sample_data import SAMPLE_CAPTIONS

    keys = sorted(os.path.splitext(n)[0] for n in os.listdir(ctx['hr']))
    captions = {k: SAMPLE_CAPTIONS[k] for k in keys if k != ctx['key']}
    build_prompt_store('text', str(path), cached_prompt_encoder('ViT-B-32', 'none'), captions=captions, progress=False)


def copy_of(name):
    def write(path, ctx):
        shutil.copy(ctx[name], path)

    return write


PYTHON_TAG = 'name: x\nmodel_type: !!python/object/apply:os.system ["touch {dir}/pwned"]\n'
# Nine levels of nine aliases: 400 bytes of YAML that expands to 9 ** 9 (387 million) strings.
ALIAS_BOMB = (
    'a: &a ['
    + ', '.join(['lol'] * 9)
    + ']\n'
    + ''.join(f'{k}: &{k} [{", ".join([f"*{p}"] * 9)}]\n' for p, k in zip('abcdefgh', 'bcdefghi'))
)
RECURSIVE_ALIAS = 'name: x\nnetwork_g: &a {type: EDSRPlus, inner: *a}\n'


def with_placeholders(content):
    """A text file whose ``{dir}`` is the row's folder."""

    def write(path, ctx):
        Path(path).write_text(content.format(**ctx))

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


def infer(*extra, weights='{weights}', input='{image}', opt='{opt}'):
    return ('--opt', opt, '--weights', weights, '--input', input, '--output', '{dir}/out', *extra)


def prepare(*extra, images='{dir}/images'):
    return ('--images', images, '--output', '{dir}/out', *COCO, *extra)


def coco_captions(images, annotations):
    return json_file({'images': images, 'annotations': annotations})


def sr(h, w):
    """What x2 super-resolution of an h x w image writes: 3 channels (shape checked as uint8)."""
    return (2 * h, 2 * w, 3)


def converted(row_id, h, w, *extra, attention=(), **pixels):
    """A ``converted`` row: pdnsr-infer (with ``extra``) on one h x w image file written by ``image(h, w,
    **pixels)``; it writes ``out/in_pdnsr.png`` of twice that size, and for each DCM of ``attention`` its mask over
    that image beside the colour bar."""
    bar = colour_bar(2 * h)
    written = {'out/in_pdnsr.png': sr(h, w)}
    written.update({f'out/in_attention_dcm{i}.png': (bar.shape[0], 2 * w + bar.shape[1], 3) for i in attention})
    return Case(
        row_id,
        'pdnsr-infer',
        infer(*extra, input='{dir}/in.png'),
        files={'in.png': image(h, w, **pixels)},
        expect='converted',
        written=written,
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
    # ---- a command never writes over, into or deletes what it reads (docs/inference.md, docs/data_preparation.md)
    Case(
        'infer-output-is-its-input-folder',
        'pdnsr-infer',
        infer('--suffix', '', input='{dir}/in')[:-2] + ('--output', '{dir}/in'),
        ('--output {dir}/in is --input {dir}/in',),
        files={'in': folder(**{'a.png': image(12, 10)})},
        outputs=('in',),
    ),
    Case(
        'infer-output-is-its-input-folder-with-a-suffix',
        'pdnsr-infer',
        infer(input='{dir}/in')[:-2] + ('--output', '{dir}/in'),
        ('--output {dir}/in is --input {dir}/in',),
        files={'in': folder(**{'a.png': image(12, 10)})},
        outputs=('in',),
    ),
    Case(
        'infer-output-holds-the-input',
        'pdnsr-infer',
        infer('--suffix', '', input='{dir}/out/a.png'),
        ('--output {dir}/out holds --input {dir}/out/a.png',),
        files={'out': folder(**{'a.png': image(12, 10)})},
    ),
    Case(
        'prepare-benchmark-into-the-folder-of-its-input',
        'prepare_benchmark.py',
        ('{dir}/Set5_x4/HR', '{dir}/Set5_x4', '--scale', '2', '--overwrite', '--workers', '1'),
        ('output {dir}/Set5_x4 holds input {dir}/Set5_x4/HR',),
        files={'Set5_x4': folder(HR=folder(**{'a.png': image(17, 14)}))},
        outputs=('Set5_x4',),
    ),
    Case(
        'prepare-benchmark-output-is-its-input',
        'prepare_benchmark.py',
        ('{dir}/hr', '{dir}/hr', '--scale', '2', '--workers', '1'),
        ('output {dir}/hr is input {dir}/hr',),
        files={'hr': folder(**{'a.png': image(17, 14)})},
        outputs=('hr',),
        slow=True,
    ),
    Case(
        'prepare-coco-output-holds-its-images',
        'prepare_coco.py',
        prepare(images='{dir}/out/images'),
        ('--output {dir}/out holds --images {dir}/out/images',),
        files={'out': folder(images=folder(**{'good.png': image(32, 32)}))},
        slow=True,
    ),
    Case(
        'prompt-store-over-its-image-folder',
        'make_prompt_lmdb.py',
        (
            '--kind',
            'image',
            '--images',
            '{dir}/imgs',
            '--out',
            '{dir}/imgs',
            '--overwrite',
            '--clip-pretrained',
            'none',
        ),
        ('--out {dir}/imgs is --images {dir}/imgs',),
        files={'imgs': folder(**{'a.png': image(16, 16)})},
        outputs=('imgs',),
    ),
    Case(
        'convert-a-checkpoint-onto-itself',
        'convert_dcm_bank.py',
        ('{dir}/net.pth', '{dir}/net.pth'),
        ('output {dir}/net.pth is input {dir}/net.pth',),
        files={'net.pth': copy_of('weights')},
        outputs=('net.pth',),
    ),
    Case(
        'export-onto-its-weights',
        'pdnsr-export',
        ('--opt', '{opt}', '--weights', '{dir}/net.onnx', '--output', '{dir}/net.onnx'),
        ('--output {dir}/net.onnx is --weights {dir}/net.onnx',),
        files={'net.onnx': copy_of('weights')},
        outputs=('net.onnx',),
        needs='onnx',
        slow=True,
    ),
    Case(
        'attention-figure-onto-its-image',
        'visualize_attention.py',
        (
            '--opt',
            '{opt}',
            '--weights',
            '{weights}',
            '--image',
            '{dir}/lr.png',
            '--output',
            '{dir}/lr.png',
            '--prompt',
            'a cat',
            '--clip-pretrained',
            'none',
        ),  # fmt: skip
        ('--output {dir}/lr.png is --image {dir}/lr.png',),
        files={'lr.png': image(12, 10)},
        outputs=('lr.png',),
        slow=True,
    ),
    # ---- option files are data: no Python tag runs, no alias bomb expands
    Case(
        'option-file-with-a-python-tag',
        'pdnsr/test.py',
        ('{dir}/test.yml',),
        ('{dir}/test.yml (line 2)', 'python/object/apply:os.system', 'data only'),
        files={'test.yml': with_placeholders(PYTHON_TAG)},
        outputs=(*RUNS, 'pwned'),
    ),
    Case(
        'option-file-with-a-python-tag-for-training',
        'pdnsr/train.py',
        ('{dir}/train.yml',),
        ('{dir}/train.yml (line 2)', 'python/object/apply:os.system'),
        files={'train.yml': with_placeholders(PYTHON_TAG)},
        outputs=(*RUNS, 'pwned'),
    ),
    Case(
        'option-file-with-a-python-tag-for-inference',
        'pdnsr-infer',
        infer(opt='{dir}/net.yml'),
        ('{dir}/net.yml (line 2)', 'python/object/apply:os.system'),
        files={'net.yml': with_placeholders(PYTHON_TAG)},
        outputs=('out', 'pwned'),
    ),
    Case(
        'option-file-with-a-python-tag-for-export',
        'pdnsr-export',
        ('--opt', '{dir}/net.yml', '--weights', '{weights}', '--output', '{dir}/model.onnx'),
        ('{dir}/net.yml (line 2)', 'python/object/apply:os.system'),
        files={'net.yml': with_placeholders(PYTHON_TAG)},
        outputs=('model.onnx', 'pwned'),
        needs='onnx',
        slow=True,
    ),
    Case(
        'option-file-alias-bomb',
        'pdnsr/train.py',
        ('{dir}/train.yml',),
        ('{dir}/train.yml', 'more than 100,000 values', 'alias bomb'),
        files={'train.yml': text(ALIAS_BOMB), 'experiments': older_run('x')},
        outputs=RUNS,
    ),
    Case(
        'option-file-recursive-alias',
        'pdnsr/test.py',
        ('{dir}/test.yml',),
        ('{dir}/test.yml', 'recursive alias'),
        files={'test.yml': text(RECURSIVE_ALIAS)},
        outputs=RUNS,
        slow=True,
    ),
    Case(
        'option-file-too-large',
        'pdnsr-infer',
        infer(opt='{dir}/net.yml'),
        ('{dir}/net.yml', 'has 1,200,000 bytes, over the 1,048,576'),
        files={'net.yml': text('# padding\n' * 120_000)},
    ),
    Case(
        'option-file-is-a-list',
        'pdnsr/test.py',
        ('{dir}/test.yml',),
        ('-opt {dir}/test.yml', 'mapping of sections, not a list'),
        files={'test.yml': text('- name\n- network_g\n')},
        outputs=RUNS,
        slow=True,
    ),
    Case(
        'force-yml-without-a-value',
        'pdnsr/test.py',
        ('{dir}/test.yml', '--force_yml', 'val:save_img'),
        ("--force_yml 'val:save_img'", 'section:key=value'),
        files={'test.yml': option_file()},
        outputs=RUNS,
        slow=True,
    ),
    # ---- finite or refused
    Case(
        'weights-with-a-nan',
        'pdnsr-infer',
        infer(weights='{dir}/net.pth'),
        ('{dir}/net.pth', "tensor 'conv_first.weight'", 'NaN or infinite'),
        files={'net.pth': weights_with(float('nan'))},
    ),
    Case(
        'weights-with-an-infinity-for-export',
        'pdnsr-export',
        ('--opt', '{opt}', '--weights', '{dir}/net.pth', '--output', '{dir}/model.onnx'),
        ('{dir}/net.pth', "tensor 'conv_first.weight'", 'NaN or infinite'),
        files={'net.pth': weights_with(float('inf'))},
        outputs=('model.onnx',),
        needs='onnx',
        slow=True,
    ),
    Case(
        'store-with-a-nan',
        'pdnsr/test.py',
        ('{dir}/test.yml',),
        ('{dir}/prompts.lmdb', "key '{key}'", 'NaN or infinite'),
        files={
            'prompts.lmdb': store_copy(lambda txn, key: txn.put(key, np.full(512, np.nan, '<f4').tobytes())),
            'test.yml': option_file(store='{dir}/prompts.lmdb'),
        },
        outputs=RUNS,
    ),
    Case(
        'store-with-a-nan-for-training',
        'pdnsr/train.py',
        ('{dir}/train.yml',),
        ('datasets.train', '{dir}/prompts.lmdb', "key '{key}'", 'NaN or infinite'),
        files={
            'prompts.lmdb': store_copy(lambda txn, key: txn.put(key, np.full(512, np.nan, '<f4').tobytes())),
            'train.yml': train_option_file(store='{dir}/prompts.lmdb'),
            'experiments': older_run(),
        },
        outputs=RUNS,
    ),
    # ---- every check before the first folder: an older run of the same name is neither archived nor touched
    Case(
        'train-network-x2-with-scale-4',
        'pdnsr/train.py',
        ('{dir}/train.yml',),
        ('network_g makes x2 images', 'scale: 4'),
        files={'train.yml': train_option_file(scale=4), 'experiments': older_run()},
        outputs=RUNS,
    ),
    Case(
        'train-lr-images-of-another-scale',
        'pdnsr/train.py',
        ('{dir}/train.yml',),
        ('datasets.train', 'is 96x96', 'is 24x24, not 1/2 of it'),
        files={'train.yml': train_option_file(lr='{lr4}'), 'experiments': older_run()},
        outputs=RUNS,
    ),
    Case(
        'train-store-lacks-a-key',
        'pdnsr/train.py',
        ('{dir}/train.yml',),
        ('datasets.train', '{dir}/prompts.lmdb', 'no prompt for 1 of 6 images', "'{key}'"),
        files={
            'prompts.lmdb': store_without_first_key,
            'train.yml': train_option_file(store='{dir}/prompts.lmdb'),
            'experiments': older_run(),
        },
        outputs=RUNS,
    ),
    Case(
        'train-a-network-too-large-for-the-memory',
        'pdnsr/train.py',
        ('{dir}/train.yml',),
        ('network_g', 'parameters', 'GiB of memory', 'dcm.num_kernels'),
        files={'train.yml': train_option_file(dcm={'num_kernels': 1_000_000}), 'experiments': older_run()},
        outputs=RUNS,
    ),
    Case(
        'train-skip-nonfinite-negative',
        'pdnsr/train.py',
        ('{dir}/train.yml', '--force_yml', 'train:skip_nonfinite=-1'),
        ('train.skip_nonfinite must be an integer >= 0', '-1'),
        files={'train.yml': train_option_file(), 'experiments': older_run()},
        outputs=RUNS,
        slow=True,
    ),
    Case(
        'test-network-x2-with-scale-4',
        'pdnsr/test.py',
        ('{dir}/test.yml', '--force_yml', 'scale=4'),
        ('network_g makes x2 images', 'scale: 4'),
        files={'test.yml': option_file()},
        outputs=RUNS,
        slow=True,
    ),
    # ---- inputs docs/inference.md says are converted, and the smallest sizes
    converted('image-1x1', 1, 1),
    converted(
        'image-1-pixel-high-with-attention',
        1,
        20,
        '--save-attention',
        attention=(0, 1),
    ),
    converted('image-greyscale', 12, 10, channels=1),
    converted('image-rgba', 12, 10, channels=4),
    converted('image-16-bit', 12, 10, dtype=np.uint16),
]
CASES_BY_ID = {case.id: case for case in CASES}


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
    lr4 = root / 'lr4'  # the HR images at a quarter of their size: LR images of another scale than the network's
    lr4.mkdir()
    for name in os.listdir(paired_data['hr']):
        hr = cv2.imread(os.path.join(paired_data['hr'], name))
        cv2.imwrite(str(lr4 / name), cv2.resize(hr, (hr.shape[1] // 4, hr.shape[0] // 4), interpolation=cv2.INTER_AREA))
    return {
        'lr4': str(lr4),
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
        (folder_path / name).parent.mkdir(parents=True, exist_ok=True)
        writer(folder_path / name, ctx)
    return Outcome(case, folder_path, ctx, {out: snapshot(folder_path / out) for out in case.outputs})


def _run(outcome):
    prefix, _ = COMMANDS[outcome.case.command]
    argv = prefix + [arg.format(**outcome.ctx) for arg in outcome.case.args]
    # Outputs of basicsr's pipeline go under PDNSR_ROOT, the row's folder; one thread each: the rows run side by side.
    env = dict(os.environ, PDNSR_ROOT=str(outcome.folder), OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    env.pop('PDNSR_DEBUG', None)
    proc = commands.run(argv, cwd=outcome.folder, env=env, timeout=TIMEOUT_S)
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
