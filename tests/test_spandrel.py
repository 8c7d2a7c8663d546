"""spandrel: pdnsr files load through spandrel.ModelLoader after pdnsr.tools.export.spandrel.install() and equal
pdnsr's own inference; checkpoints without a prompt are refused by pdnsr's entries; plain basicsr checkpoints still
load as their own architecture; the descriptors' dtype flags are what the networks do."""

import copy

import numpy as np
import pytest
import spandrel
import torch
from basicsr.archs.rrdbnet_arch import RRDBNet
from deploy_util import PROMPT_DIM, PROMPTED, build, unit_prompts, write_model
from safetensors.torch import load_file

import pdnsr.tools.export.spandrel
from pdnsr import provenance
from pdnsr.checkpoints import dcm_layout_of, network_layout
from pdnsr.inference import load_network, super_resolve
from pdnsr.tools.export.cli import main as export_main
from pdnsr.tools.export.onnx import psnr
from pdnsr.tools.export.spandrel import NETWORKS


@pytest.fixture(scope='module', autouse=True)
def installed():
    return pdnsr.tools.export.spandrel.install()


def _export(tmp_path, name, capsys, record=None):
    """A checkpoint of PROMPTED[name] (paper bank; provenance ``record``), exported with a prompt file; returns
    (file, option, weights, prompt)."""
    opt, weights, _ = write_model(str(tmp_path), name, PROMPTED[name], record=record)
    prompt = unit_prompts(1, seed=7)
    emb = tmp_path / f'{name}.npy'
    np.save(emb, prompt.numpy())
    out = tmp_path / f'{name}.safetensors'
    assert export_main(['--opt', opt, '--weights', weights, '-o', str(out), '--prompt-embedding', str(emb)]) == 0
    assert 'for spandrel' in capsys.readouterr().out
    return out, opt, weights, prompt


def test_install_is_idempotent_and_ahead_of_every_architecture():
    assert pdnsr.tools.export.spandrel.install() == []
    order = [a.architecture.id for a in spandrel.MAIN_REGISTRY.architectures('detection')]
    ours = [i for i in order if i.startswith('pdnsr.')]
    assert ours == [f'pdnsr.{name}' for name in pdnsr.tools.export.spandrel.NETWORKS]
    assert order[: len(ours)] == ours  # ahead of ESRGAN, SwinIR, RCAN and all others


SLOW_NETWORKS = [pytest.param(name, marks=pytest.mark.slow) for name in ('RCANPlus', 'RRDBNetPlus', 'SwinIRPlus')]


@pytest.mark.parametrize('name', ['EDSRPlus', 'RDNPlus', *SLOW_NETWORKS])
def test_exported_file_loads_and_equals_pdnsr(tmp_path, capsys, name):
    path, opt, weights, prompt = _export(tmp_path, name, capsys)
    model = spandrel.ModelLoader().load_from_file(str(path))
    assert isinstance(model, spandrel.ImageModelDescriptor)
    assert model.architecture.id == f'pdnsr.{name}'
    scale = PROMPTED[name].get('upscale', PROMPTED[name].get('scale'))
    assert (model.scale, model.input_channels, model.output_channels, model.purpose) == (scale, 3, 3, 'SR')
    assert [model.supports_half, model.supports_bfloat16] == list(NETWORKS[name][2:])  # measured below
    assert model.tiling == (spandrel.ModelTiling.DISCOURAGED if name == 'RCANPlus' else spandrel.ModelTiling.SUPPORTED)
    # The "+" networks pad themselves (RRDBNet+ x2 to even sizes, SwinIR+ to its window of 4): spandrel must not
    # pad them its own way, so the 19x14 image below (odd, not a multiple of 4) is given to them as it is.
    assert model.size_requirements == spandrel.SizeRequirements(minimum=0, multiple_of=1)
    net = load_network(opt, weights, 'cpu')[0]  # the paper-bank checkpoint, as pdnsr-infer runs it
    image = torch.rand(1, 3, 19, 14, generator=torch.Generator().manual_seed(0))
    error = float((model(image) - super_resolve(net, image, prompt)).abs().max())
    print(f'\n{name}: spandrel descriptor vs pdnsr super_resolve {error:.1e}')  # docs/deploy.md (-s)
    assert error <= 1e-5
    # Random weights put much of the output outside [0, 1], where the clamp hides differences: the raw output too.
    with torch.no_grad():
        raw = net(image, prompt)
        assert (model.model(image) - raw).abs().max() <= 1e-5 * max(1.0, float(raw.abs().max()))
        assert not torch.allclose(raw, net(image, unit_prompts(1, seed=8)), atol=1e-3)


def test_checkpoint_without_prompt_is_refused_not_loaded_as_esrgan(tmp_path):
    _, weights, _ = write_model(str(tmp_path), 'rrdb', PROMPTED['RRDBNetPlus'])
    refused = (
        r'pdnsr checkpoint with DCMs \(keys dcms\.\*; laid out as RRDBNet\+ or as a PromptGuided network on '
        r'RRDBNet\) without a stored prompt.*pdnsr-export --format spandrel'
    )
    with pytest.raises(spandrel.UnsupportedModelError, match=refused):
        spandrel.ModelLoader().load_from_file(weights)
    for name in ('EDSRPlus', 'RCANPlus'):
        _, weights, _ = write_model(str(tmp_path), name, PROMPTED[name])
        with pytest.raises(spandrel.UnsupportedModelError, match='without a stored prompt'):
            spandrel.ModelLoader().load_from_file(weights)


def test_prompt_guided_checkpoint_without_prompt_is_refused_by_a_message_that_fits_it(tmp_path):
    """PromptGuided(RDN) with DCMs after rdbs.* has RDN+'s keys: without a config the keys cannot tell them apart,
    so the message names both rather than calling it an RDN+ checkpoint."""
    _, weights, _ = write_model(str(tmp_path), 'guided', PROMPTED['PromptGuided'])
    with pytest.raises(spandrel.UnsupportedModelError) as err:
        spandrel.ModelLoader().load_from_file(weights)
    assert 'laid out as RDN+ or as a PromptGuided network on RDN) without a stored prompt' in str(err.value)


def test_file_records_the_compact_bank_it_holds(tmp_path, capsys):
    options = PROMPTED['EDSRPlus']
    encoder = {'model_name': 'ViT-B-32', 'weights': 'random-seed-0', 'kind': 'text', 'view': None}
    record = provenance.make_record(options, encoder, PROMPT_DIM, network_layout(build(options)))
    path, *_ = _export(tmp_path, 'EDSRPlus', capsys, record=record)
    tensors = load_file(str(path))
    assert dcm_layout_of(tensors)['bank'] == 'compact'
    config = pdnsr.tools.export.spandrel.read_config(tensors)
    assert config['network_g']['dcm'] == {'bank': 'compact'}
    assert config['checkpoint']['dcm'] == {**record['dcm'], 'bank': 'compact', 'trained_bank': 'paper'}
    assert config['checkpoint']['network_g']['dcm'] == {'bank': 'compact'}


def test_prompt_guided_rrdbnet_x2_needs_even_sizes_and_spandrel_pads_them(tmp_path):
    """basicsr's RRDBNet at x2 pixel-unshuffles by 2 and does not pad (RRDBNet+ does): as a PromptGuided base its
    descriptor asks for multiples of 2, and spandrel's padding runs an odd image the bare network refuses."""
    options = dict(
        type='PromptGuided',
        base=dict(type='RRDBNet', num_in_ch=3, num_out_ch=3, scale=2, num_feat=8, num_block=1, num_grow_ch=4),
        dcm_after='body.*',
        prompt_dim=PROMPT_DIM,
    )
    net = build(options)
    path = tmp_path / 'guided_rrdb.safetensors'
    pdnsr.tools.export.spandrel.save_spandrel(str(path), net, options, unit_prompts(1))
    model = spandrel.ModelLoader().load_from_file(str(path))
    assert model.size_requirements == spandrel.SizeRequirements(minimum=0, multiple_of=2)
    image = torch.rand(1, 3, 13, 10)
    with torch.no_grad(), pytest.raises(AssertionError):  # basicsr's pixel_unshuffle asserts even sizes
        net(image, unit_prompts(1))
    assert model(image).shape == (1, 3, 26, 20)
    even = torch.rand(1, 3, 12, 10)
    assert (model(even) - super_resolve(net, even, unit_prompts(1))).abs().max() <= 1e-5


def test_plain_basicsr_rrdbnet_still_loads_as_esrgan(tmp_path):
    torch.manual_seed(0)
    net = RRDBNet(3, 3, scale=4, num_feat=16, num_block=2).eval()  # spandrel assumes num_grow_ch 32
    path = tmp_path / 'esrgan.pth'
    torch.save({'params_ema': net.state_dict()}, path)
    model = spandrel.ModelLoader().load_from_file(str(path))
    assert model.architecture.id == 'ESRGAN' and model.scale == 4
    image = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        assert (model(image) - net(image).clamp(0, 1)).abs().max() <= 1e-5


def test_prompt_guided_file_loads_from_its_stored_options(tmp_path, capsys):
    path, opt, weights, prompt = _export(tmp_path, 'PromptGuided', capsys)
    model = spandrel.ModelLoader().load_from_file(str(path))
    assert model.architecture.id == 'pdnsr.PromptGuided' and model.scale == 4
    assert model.supports_half  # its base, RDN, is measured as RDN+
    net = load_network(opt, weights, 'cpu')[0]
    image = torch.rand(1, 3, 9, 11)
    assert (model(image) - super_resolve(net, image, prompt)).abs().max() <= 1e-5


def test_half_descriptor_runs(tmp_path, capsys):
    path, opt, weights, prompt = _export(tmp_path, 'EDSRPlus', capsys)
    model = spandrel.ModelLoader().load_from_file(str(path)).half()
    image = torch.rand(1, 3, 13, 11)
    out = model(image.half())
    assert out.dtype == torch.float16
    net = load_network(opt, weights, 'cpu')[0]
    assert psnr(out.float(), super_resolve(net, image, prompt)) >= 40


@pytest.mark.slow
@pytest.mark.parametrize('name', [n for n in pdnsr.tools.export.spandrel.NETWORKS if n != 'PromptGuided'])
def test_dtype_flags_are_measured(name):
    """supports_half / supports_bfloat16 hold when the network runs in that dtype at a size other than the one it
    was built for, with finite output within 40 dB of float32 (CPU)."""
    net = build(PROMPTED[name])
    image, prompt = torch.rand(1, 3, 13, 11), unit_prompts(1)
    with torch.no_grad():
        want = net(image, prompt)
        measured = []
        for dtype in (torch.float16, torch.bfloat16):
            try:
                out = copy.deepcopy(net).to(dtype)(image.to(dtype), prompt.to(dtype)).float()
                measured.append(bool(torch.isfinite(out).all()) and psnr(out, want) >= 40)
            except RuntimeError:
                measured.append(False)
    assert measured == list(pdnsr.tools.export.spandrel.NETWORKS[name][2:]), measured
