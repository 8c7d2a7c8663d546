"""ONNX export: every registered network against PyTorch with onnxruntime (CPU), baked vs two-input, float16, the
graph's operators and metadata, the verification that refuses a wrong graph, pdnsr-export and pdnsr-infer --onnx."""

import json
import os
import sys

import commands
import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from deploy_util import BASELINES, PROMPT_DIM, PROMPTED, SWIN_FIXED, build, unit_prompts, write_model
from torch import nn

from conftest import REPO_ROOT
from pdnsr import provenance
from pdnsr.archs import type_takes_prompt
from pdnsr.checkpoints import network_layout
from pdnsr.data.image_files import read_rgb
from pdnsr.errors import UserError
from pdnsr.inference import super_resolve
from pdnsr.tools.export.cli import main as export_main
from pdnsr.tools.export.onnx import (
    FP16_MIN_PSNR,
    FP32_MAX_ERROR,
    ExportMismatch,
    OnnxNetwork,
    check_graph,
    export_onnx,
    psnr,
)
from pdnsr.tools.export.standins import FORMS, ExportModule
from pdnsr.tools.infer import main as infer_main

# (N, H, W): odd sizes, a batch of two; SwinIR's graph has one size, so its inputs pad to it (window 4).
SIZES = [(1, 16, 16), (2, 13, 19), (1, 9, 30)]
SWIN_SIZES = [(1, *SWIN_FIXED), (2, 21, 17), (1, 23, 19)]
FP32 = FP32_MAX_ERROR  # the targets, which the exporter enforces too (defined once, in pdnsr.tools.export.onnx)


def _export(tmp_path, name, net, **kw):
    path = str(tmp_path / f'{name}.onnx')
    if type(net).__name__ == 'SwinIRPlus':
        kw.setdefault('fixed_size', SWIN_FIXED)
    return path, export_onnx(net, path, **kw)


def _ort(path, image, prompt=None):
    sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    feeds = {'image': image.numpy()}
    if prompt is not None:
        feeds['prompt'] = prompt.numpy()
    return torch.from_numpy(sess.run(['output'], feeds)[0])


def _images(n, h, w, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------------
# stand-ins (PyTorch only)
@pytest.mark.parametrize('name', ['EDSRPlus', 'EDSRPlus-noatt-compact', 'RCANPlus-static', 'PromptGuided'])
def test_standins_equal_the_network(name):
    net = build(PROMPTED[name])
    image, prompt = _images(2, 11, 13), unit_prompts(2)
    with torch.no_grad():
        want = net(image, prompt)
        for form in FORMS:
            torch.testing.assert_close(ExportModule(net, form=form)(image, prompt), want, rtol=0, atol=1e-5)
        baked = ExportModule(net, prompt=prompt[:1])(image)
        torch.testing.assert_close(baked, net(image, prompt[:1].expand(2, -1)), rtol=0, atol=1e-5)
        assert not torch.allclose(want, net(image, unit_prompts(2, seed=5)), atol=1e-3)  # the prompt matters


def test_every_registered_prompt_network_is_covered():
    ours = {name for name, cls in ARCH_REGISTRY if cls.__module__.startswith('pdnsr.')}
    assert {name for name in ours if type_takes_prompt(name)} == {opt['type'] for opt in PROMPTED.values()}
    assert {name for name in ours if not type_takes_prompt(name)} <= set(BASELINES)


# ---------------------------------------------------------------------------------------------------------------------
# graphs against PyTorch
def test_edsr_plus_two_input_and_baked(tmp_path):
    """The fast loop's check: EDSR+ at three sizes, two-input vs PyTorch and baked vs two-input."""
    net = build(PROMPTED['EDSRPlus'])
    two, meta = _export(tmp_path, 'two', net)
    baked_prompt = unit_prompts(1, seed=3)
    baked, baked_meta = _export(tmp_path, 'baked', net, prompt=baked_prompt)
    assert (meta['graph'], baked_meta['graph'], meta['scale'], meta['prompt_dim']) == ('two-input', 'baked', 2, 512)
    for n, h, w in SIZES:
        image = _images(n, h, w)
        prompt = unit_prompts(n, seed=n)
        with torch.no_grad():
            want = net(image, prompt)
        got = _ort(two, image, prompt)
        assert got.shape == (n, 3, 2 * h, 2 * w)
        assert (got - want).abs().max() <= FP32
        same = _ort(two, image, baked_prompt.expand(n, -1).contiguous())
        assert (_ort(baked, image) - same).abs().max() <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(PROMPTED))
def test_every_prompt_network_two_input_and_baked(tmp_path, name):
    net = build(PROMPTED[name])
    two, meta = _export(tmp_path, 'two', net)
    baked_prompt = unit_prompts(1, seed=3)
    baked, _ = _export(tmp_path, 'baked', net, prompt=baked_prompt)
    errors, baked_errors = [], []
    two_net, baked_net = OnnxNetwork(two), OnnxNetwork(baked)
    for n, h, w in SWIN_SIZES if name == 'SwinIRPlus' else SIZES:
        image, prompt = _images(n, h, w), unit_prompts(n, seed=n)
        with torch.no_grad():
            want = net(image, prompt)
        if name == 'SwinIRPlus':  # one input size: OnnxNetwork pads to it, as the network pads to the window
            got = two_net(image, prompt)
        else:
            got = _ort(two, image, prompt)
        via_baked, via_two = baked_net(image), two_net(image, baked_prompt.expand(n, -1))
        assert got.shape == want.shape
        errors.append(float((got - want).abs().max()))
        baked_errors.append(float((via_baked - via_two).abs().max()))
    # The figures of docs/deploy.md: pytest tests/test_export_onnx.py -m slow -k every_prompt -s
    print(f'\n{name}: two-input vs PyTorch {max(errors):.1e}, baked vs two-input {max(baked_errors):.1e}')
    assert max(errors) <= FP32, errors
    assert max(baked_errors) <= 1e-5, baked_errors


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(BASELINES))
def test_baselines_export(tmp_path, name):
    net = build(BASELINES[name])
    path, meta = _export(tmp_path, name, net)
    assert meta['graph'] == 'image-only' and meta['prompt_dim'] is None
    errors = []
    for n, h, w in SIZES:
        image = _images(n, h, w)
        with torch.no_grad():
            errors.append(float((_ort(path, image) - net(image)).abs().max()))
    print(f'\n{name}: image-only vs PyTorch {max(errors):.1e}')
    assert max(errors) <= FP32, errors


@pytest.mark.slow
@pytest.mark.parametrize('name', ['EDSRPlus', 'RCANPlus', 'RDNPlus', 'RRDBNetPlus', 'PromptGuided'])
def test_fp16_graph_psnr_against_fp32_pytorch(tmp_path, name):
    net = build(PROMPTED[name])
    two, meta = _export(tmp_path, 'half', net, half=True)
    baked, _ = _export(tmp_path, 'half_baked', net, half=True, prompt=unit_prompts(1, seed=3))
    assert meta['dtype'] == 'float16'
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in onnx.load(two).graph.initializer)
    image, prompt = _images(2, 13, 19), unit_prompts(2, seed=1)
    with torch.no_grad():
        want, want_baked = net(image, prompt), net(image, unit_prompts(1, seed=3).expand(2, -1))
    quality = psnr(_ort(two, image, prompt), want), psnr(_ort(baked, image), want_baked)
    print(f'\n{name}: float16 graphs vs float32 PyTorch, PSNR two-input {quality[0]:.1f} dB, baked {quality[1]:.1f} dB')
    assert min(quality) >= FP16_MIN_PSNR == 50, quality


def test_baked_graph_is_plain_convolutions(tmp_path):
    net = build(PROMPTED['EDSRPlus'])
    path, _ = _export(tmp_path, 'baked', net, prompt=unit_prompts(1))
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ['image']
    ops = {node.op_type for node in model.graph.node}
    assert 'MatMul' not in ops and 'Gemm' not in ops and 'Softmax' not in ops  # no router, no per-sample kernels
    # conv_first, 2 blocks of 2, each DCM's mask (1x1) and convolution of [M x; M], conv_after_body, upsample, last
    assert sum(node.op_type == 'Conv' for node in model.graph.node) == 1 + 2 * 2 + 2 * 2 + 1 + 1 + 1
    assert {d.domain for d in model.opset_import} <= {'', 'ai.onnx'}
    assert min(d.version for d in model.opset_import) >= 17


def _record(options):
    """The provenance record training writes for ``options`` (paper bank, the random-weight CLIP's prompts)."""
    encoder = {'model_name': 'ViT-B-32', 'weights': 'random-seed-0', 'kind': 'text', 'view': None}
    return provenance.make_record(options, encoder, PROMPT_DIM, network_layout(build(options)))


def test_metadata_records_graph_and_provenance(tmp_path, capsys):
    record = _record(PROMPTED['EDSRPlus'])
    assert record['dcm']['bank'] == 'paper'
    opt, weights, _ = write_model(str(tmp_path), 'edsr', PROMPTED['EDSRPlus'], record=record)
    emb = tmp_path / 'prompt.npy'
    np.save(emb, unit_prompts(1).numpy()[0])
    out = tmp_path / 'baked.onnx'
    assert export_main(['--opt', opt, '--weights', weights, '-o', str(out), '--prompt-embedding', str(emb)]) == 0
    assert 'baked ONNX graph of EDSRPlus x2' in capsys.readouterr().out
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    meta = json.loads(props['pdnsr'])
    assert (meta['graph'], meta['scale'], meta['prompt_dim'], meta['dtype']) == ('baked', 2, 512, 'float32')
    # What the file holds: the compact bank (converted at export), the trained one kept as trained_bank.
    assert meta['network_g']['dcm'] == {'bank': 'compact'}
    assert meta['checkpoint']['dcm'] == {**record['dcm'], 'bank': 'compact', 'trained_bank': 'paper'}
    assert meta['checkpoint']['network_g']['dcm'] == {'bank': 'compact'}
    assert meta['checkpoint']['prompt_encoder'] == record['prompt_encoder']
    assert torch.load(weights)['pdnsr'] == record  # the checkpoint itself is left as it is
    assert meta['prompt']['kind'] == 'embedding' and meta['prompt']['file'] == 'prompt.npy'
    assert len(meta['prompt']['sha256']) == 64
    assert meta['verified']['max_abs_error'] <= FP32 and meta['verified']['shape'][0] == 2


# ---------------------------------------------------------------------------------------------------------------------
# refusals
class _SizeBaking(nn.Module):
    """Upsamples to a size computed in Python from the input's shape: the tracer keeps it as a constant."""

    def forward(self, x):
        return nn.functional.interpolate(x, size=(int(x.shape[2]) * 2, int(x.shape[3]) * 2))


def test_a_graph_that_differs_from_pytorch_is_deleted(tmp_path):
    path = tmp_path / 'baked_size.onnx'
    with pytest.raises(ExportMismatch, match='2x3x19x27'):
        export_onnx(_SizeBaking(), path)
    assert os.listdir(tmp_path) == []
    # At one fixed size the same module is right.
    export_onnx(_SizeBaking(), path, fixed_size=(5, 7))
    assert os.listdir(tmp_path) == ['baked_size.onnx']


def test_export_cli_verification_mismatch_exits_2_and_leaves_nothing(tmp_path, capsys):
    """A float16 graph whose features overflow float16 (weights scaled up 1e5) differs from float32 PyTorch: the
    command says so in one line, exits 2 and writes nothing."""
    opt, weights, _ = write_model(str(tmp_path), 'edsr', PROMPTED['EDSRPlus'])
    checkpoint = torch.load(weights)
    checkpoint['params']['conv_first.weight'] *= 1e5
    torch.save(checkpoint, weights)
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    assert export_main(['--opt', opt, '--weights', weights, '-o', str(out_dir / 'x.onnx'), '--half']) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith('pdnsr-export: error: the exported graph differs from PyTorch on a random 2x3x19x27'), line
    assert f'target PSNR >= {FP16_MIN_PSNR}' in line
    assert os.listdir(out_dir) == []


def test_opset_is_checked_before_anything_is_loaded(tmp_path, capsys):
    # Neither file exists: the opset is refused first.
    args = ['--opt', str(tmp_path / 'no.yml'), '--weights', str(tmp_path / 'no.pth'), '-o', str(tmp_path / 'x.onnx')]
    assert export_main([*args, '--opset', '16']) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith('pdnsr-export: error: --opset 16: pdnsr graphs need ONNX opset >= 17'), line
    with pytest.raises(UserError, match='opset >= 17'):
        export_onnx(build(BASELINES['EDSR']), tmp_path / 'x.onnx', opset=16)
    assert os.listdir(tmp_path) == []


def test_checker_failure_is_one_line_naming_the_file():
    """The real ONNX checker on a graph it refuses (a node reads a value nothing defines)."""
    value = onnx.helper.make_tensor_value_info
    node = onnx.helper.make_node('Add', ['image', 'undefined'], ['output'])
    graph = onnx.helper.make_graph([node], 'g', [value('image', 1, [1])], [value('output', 1, [1])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid('', 17)])
    with pytest.raises(UserError, match=r'^out/model\.onnx: the exported graph fails the ONNX checker') as err:
        check_graph(model, 'out/model.onnx')
    assert '\n' not in str(err.value) and 'undefined' in str(err.value)


def test_swinir_needs_a_fixed_size_and_float32(tmp_path):
    net = build(PROMPTED['SwinIRPlus'])
    with pytest.raises(UserError, match='dynamic input size.*--fixed-size'):
        export_onnx(net, tmp_path / 's.onnx')
    with pytest.raises(UserError, match='cannot be traced in float16'):
        export_onnx(net, tmp_path / 's.onnx', fixed_size=(21, 19), half=True)
    assert os.listdir(tmp_path) == []


def _one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_export_cli_user_errors_leave_nothing(tmp_path, capsys):
    opt, weights, _ = write_model(str(tmp_path), 'edsr', PROMPTED['EDSRPlus'])
    bad_type = tmp_path / 'bad.yml'
    bad_type.write_text('network_g:\n  type: NoSuchNet\n  num_feat: 8\n')
    state = torch.load(weights)['params']
    del state['dcms.1.proj.bias']
    missing = tmp_path / 'missing.pth'
    torch.save({'params': state}, missing)
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    cases = [
        (['--opt', str(bad_type), '--weights', weights], "'NoSuchNet' is not a registered network"),
        (['--opt', opt, '--weights', str(missing)], "missing key 'dcms.1.proj.bias'"),
        (['--opt', opt, '--weights', weights, '--fixed-size', '12'], 'HxW'),
    ]
    for args, message in cases:
        assert export_main([*args, '-o', str(out_dir / 'x.onnx')]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert line.startswith('pdnsr-export: error:') and message in line, line
    assert export_main(['--opt', opt, '--weights', weights, '-o', str(out_dir / 'x.safetensors')]) == 2
    assert 'needs its prompt' in _one_error_line(capsys.readouterr().err)
    assert export_main(['--opt', opt, '--weights', weights, '-o', str(out_dir / 'no' / 'x.onnx')]) == 2
    assert 'does not exist' in _one_error_line(capsys.readouterr().err)
    assert os.listdir(out_dir) == []


# ---------------------------------------------------------------------------------------------------------------------
# pdnsr-infer --onnx
def _write_inputs(folder):
    folder.mkdir()
    gen = np.random.default_rng(0)
    for name, (h, w) in {'a': (21, 17), 'b': (30, 25)}.items():
        cv2.imwrite(str(folder / f'{name}.png'), gen.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _pngs(folder):
    return {name: cv2.imread(str(folder / name)) for name in sorted(os.listdir(folder))}


@pytest.mark.slow
def test_infer_onnx_equals_pytorch_path_with_tiles(tmp_path, capsys):
    opt, weights, _ = write_model(str(tmp_path), 'edsr', PROMPTED['EDSRPlus'])
    emb = tmp_path / 'p.npy'
    np.save(emb, unit_prompts(1).numpy())
    two, baked = tmp_path / 'two.onnx', tmp_path / 'baked.onnx'
    assert export_main(['--opt', opt, '--weights', weights, '-o', str(two)]) == 0
    assert export_main(['--opt', opt, '--weights', weights, '-o', str(baked), '--prompt-embedding', str(emb)]) == 0
    _write_inputs(tmp_path / 'in')
    common = ['--input', str(tmp_path / 'in'), '--tile', '8', '--tile-pad', '4']
    assert infer_main(['--opt', opt, '--weights', weights, *common, '--output', str(tmp_path / 'torch')]) == 0
    assert infer_main(['--onnx', str(two), *common, '--output', str(tmp_path / 'two')]) == 0  # zero prompt
    assert infer_main(['--onnx', str(baked), *common, '--output', str(tmp_path / 'baked')]) == 0
    capsys.readouterr()
    torch_out, two_out, baked_out = _pngs(tmp_path / 'torch'), _pngs(tmp_path / 'two'), _pngs(tmp_path / 'baked')
    assert list(torch_out) == ['a_pdnsr.png', 'b_pdnsr.png'] and torch_out.keys() == two_out.keys()
    for name in torch_out:  # 8-bit outputs of the same function (a float rounding may flip one level)
        assert np.abs(torch_out[name].astype(int) - two_out[name]).max() <= 1
        assert not np.array_equal(torch_out[name], baked_out[name])  # the baked prompt is not the zero prompt
    # The baked graph equals the PyTorch network with that prompt, tiles and all.
    net = OnnxNetwork(baked)
    image = _images(1, 21, 17)
    torch_net = build(PROMPTED['EDSRPlus'])
    want = super_resolve(torch_net, image, unit_prompts(1), tile=8, tile_pad=4)
    assert (super_resolve(net, image, None, tile=8, tile_pad=4) - want).abs().max() <= FP32


def test_infer_onnx_refusals_one_line(tmp_path, capsys):
    net = build(PROMPTED['EDSRPlus'])
    baked = tmp_path / 'baked.onnx'
    export_onnx(net, baked, prompt=unit_prompts(1), metadata={'prompt': {'kind': 'text', 'text': 'a zebra'}})
    other = tmp_path / 'other.onnx'
    node = onnx.helper.make_node('Identity', ['image'], ['output'])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([node], 'g', [value('image', 1, None)], [value('output', 1, None)])
    onnx.save(onnx.helper.make_model(graph), other)
    _write_inputs(tmp_path / 'in')
    out = tmp_path / 'out'
    cases = [
        (['--onnx', str(baked), '--prompt', 'a cat'], "baked graph: the text 'a zebra' was built in"),
        (['--onnx', str(baked), '--captions', 'c.json'], 'takes no --captions'),
        (['--onnx', str(other)], "not a pdnsr graph (its metadata has no 'pdnsr' entry)"),
        (['--onnx', str(tmp_path / 'in' / 'a.png')], 'cannot load ONNX file'),
        (['--onnx', str(baked), '--save-attention'], '--save-attention needs the PyTorch network'),
        (['--onnx', str(baked), '--device', 'gpu0'], "--device 'gpu0' is not a device name"),
        ([], '--weights is required (or --onnx'),
    ]
    for args, message in cases:
        assert infer_main([*args, '--input', str(tmp_path / 'in'), '--output', str(out)]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert line.startswith('pdnsr-infer: error:') and message in line, line
    assert not out.exists()


@pytest.mark.slow
def test_export_cli_text_prompt_with_clip(tmp_path, capsys, clip_encoder):
    """--prompt encodes with open_clip (random weights here: none can be downloaded) once, at export."""
    opt, weights, net = write_model(str(tmp_path), 'rcan', PROMPTED['RCANPlus'])
    out = tmp_path / 'rcan.onnx'
    args = ['--opt', opt, '--weights', weights, '-o', str(out), '--prompt', 'a zebra', '--clip-pretrained', 'none']
    assert export_main(args) == 0
    prompt = clip_encoder.encode_text(['a zebra'])  # the same seed, so the same random weights
    image = _images(1, 14, 11)
    with torch.no_grad():
        assert (_ort(str(out), image) - net(image, prompt)).abs().max() <= FP32
    meta = OnnxNetwork(out).meta
    assert meta['prompt']['text'] == 'a zebra' and meta['prompt']['encoder']['weights'] == 'random-seed-0'
    assert PROMPT_DIM == prompt.shape[1]


@pytest.mark.slow
def test_export_script_writes_a_float16_graph(tmp_path):
    """scripts/export_onnx.py is the command (one run, in a subprocess as a user starts it), here with --half."""
    opt, weights, net = write_model(str(tmp_path), 'edsr', PROMPTED['EDSRPlus'])
    out = tmp_path / 'edsr_fp16.onnx'
    script = str(REPO_ROOT / 'scripts' / 'export_onnx.py')
    env = dict(os.environ, OMP_NUM_THREADS='2')
    done = commands.run([sys.executable, script, '--opt', opt, '--weights', weights, '-o', str(out), '--half'], env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f'{out}: two-input ONNX graph of EDSRPlus x2 (float16, opset 17)'), done.stdout
    model = onnx.load(str(out))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert json.loads({p.key: p.value for p in model.metadata_props}['pdnsr'])['dtype'] == 'float16'
    image, prompt = _images(1, 11, 14), unit_prompts(1, seed=2)
    with torch.no_grad():
        assert psnr(_ort(str(out), image, prompt), net(image, prompt)) >= FP16_MIN_PSNR


@pytest.mark.slow
def test_export_cli_image_prompt_with_clip(tmp_path, capsys, clip_encoder):
    """--prompt-image bakes the image's CLIP embedding (random-weight ViT-B-32, view flip without a record)."""
    opt, weights, net = write_model(str(tmp_path), 'edsr', PROMPTED['EDSRPlus'])
    _write_inputs(tmp_path / 'in')
    photo = tmp_path / 'in' / 'b.png'
    out = tmp_path / 'edsr_b.onnx'
    args = ['--opt', opt, '--weights', weights, '-o', str(out), '--prompt-image', str(photo)]
    assert export_main([*args, '--clip-pretrained', 'none']) == 0
    assert 'baked ONNX graph of EDSRPlus x2' in capsys.readouterr().out
    prompt = clip_encoder.encode_images([read_rgb(photo)], view='flip')
    image = _images(2, 13, 10)
    with torch.no_grad():
        want = net(image, prompt.expand(2, -1))
        assert (_ort(str(out), image) - want).abs().max() <= FP32
        assert not torch.allclose(want, net(image, clip_encoder.encode_text(['a photo']).expand(2, -1)), atol=1e-3)
    source = OnnxNetwork(out).meta['prompt']
    assert (source['kind'], source['file'], source['view']) == ('image', 'b.png', 'flip')
    assert source['encoder']['weights'] == 'random-seed-0' and len(source['sha256']) == 64


@pytest.mark.slow
def test_infer_onnx_text_prompt_and_captions_equal_pytorch_path(tmp_path, capsys):
    """pdnsr-infer --onnx with --prompt and with --captions on a two-input graph writes what the PyTorch path writes
    with the same flags (random-weight CLIP, --clip-pretrained none, on both paths)."""
    opt, weights, _ = write_model(str(tmp_path), 'rdn', PROMPTED['RDNPlus'])
    two = tmp_path / 'two.onnx'
    assert export_main(['--opt', opt, '--weights', weights, '-o', str(two)]) == 0
    _write_inputs(tmp_path / 'in')
    captions = tmp_path / 'captions.json'
    captions.write_text(json.dumps({'a': ['a zebra on grass'], 'b': ['a red brick wall']}))
    common = ['--input', str(tmp_path / 'in'), '--clip-pretrained', 'none', '--tile', '16', '--tile-pad', '4']
    outputs = {}
    for flags in (['--prompt', 'a zebra on grass'], ['--captions', str(captions)]):
        for label, model in (('torch', ['--opt', opt, '--weights', weights]), ('onnx', ['--onnx', str(two)])):
            folder = tmp_path / f'{label}_{flags[0][2:]}'
            assert infer_main([*model, *common, *flags, '--output', str(folder)]) == 0
            outputs[label, flags[0]] = _pngs(folder)
    capsys.readouterr()
    for flag in ('--prompt', '--captions'):
        torch_out, onnx_out = outputs['torch', flag], outputs['onnx', flag]
        assert list(torch_out) == list(onnx_out) == ['a_pdnsr.png', 'b_pdnsr.png']
        for name in torch_out:  # 8-bit outputs of the same function (a float rounding may flip one level)
            assert np.abs(torch_out[name].astype(int) - onnx_out[name]).max() <= 1, name
    # Image a has the same text either way; image b another caption, which changes it.
    assert (
        np.abs(
            outputs['onnx', '--prompt']['a_pdnsr.png'].astype(int) - outputs['onnx', '--captions']['a_pdnsr.png']
        ).max()
        <= 1
    )
    assert not np.array_equal(outputs['onnx', '--prompt']['b_pdnsr.png'], outputs['onnx', '--captions']['b_pdnsr.png'])
