"""pdnsr.inference: loading, super-resolving tensors whole / tiled, the Upsampler, and the pdnsr-infer CLI on real
images."""

import json
import math
import os
import shutil
import sys

import commands
import cv2
import numpy as np
import pytest
import torch

from pdnsr import errors as pdnsr_errors
from pdnsr import inference
from pdnsr.archs.network_options import build_network
from pdnsr.data.image_files import read_rgb
from pdnsr.inference import (
    Upsampler,
    as_rgb,
    image_to_tensor,
    load_network,
    read_network_options,
    super_resolve,
    tensor_to_rgb,
)
from pdnsr.tools.infer import main
from pdnsr.tools.sample_data import SAMPLE_CAPTIONS
from pdnsr.utils.visualization import colour_bar

EDSR_PLUS = """
network_g:
  type: EDSRPlus
  num_in_ch: 3
  num_out_ch: 3
  num_feat: 8
  num_block: 2
  upscale: 2
  prompt_dim: {prompt_dim}
"""
RDN_PLUS = """
network_g:
  type: RDNPlus
  num_feat: 8
  num_block: 2
  num_layer: 2
  growth: 8
  upscale: 2
"""
RDN = RDN_PLUS.replace('RDNPlus', 'RDN')
# Baselines that need input sides of a multiple (pdnsr.archs.plus_util.input_multiple): SwinIR of its window (8, as in
# options/test_swinir_baseline_x4.yml), RRDBNet at x2 of 2 (its pixel-unshuffle).
SWINIR = """
network_g:
  type: SwinIR
  upscale: 2
  img_size: 16
  window_size: 8
  depths: [1]
  num_heads: [2]
  embed_dim: 8
  mlp_ratio: 1
  upsampler: pixelshuffle
"""
RRDBNET_X2 = """
network_g:
  type: RRDBNet
  num_in_ch: 3
  num_out_ch: 3
  scale: 2
  num_feat: 8
  num_block: 1
  num_grow_ch: 4
"""


def _make_model(root, name, yaml_text, seed=0):
    """Write ``<name>.yml`` and a basicsr checkpoint ``<name>.pth`` of a freshly seeded network; return paths."""
    opt = os.path.join(root, f'{name}.yml')
    with open(opt, 'w') as f:
        f.write(yaml_text)
    torch.manual_seed(seed)
    net = build_network(read_network_options(opt))
    # Untrained DCMs start close to the identity residual; larger kernels make the prompt visibly matter.
    for m in net.modules():
        if hasattr(m, 'reset_parameters') and type(m).__name__ == 'DynamicCorrelationModule':
            m.reset_parameters(init_scale=3.0)
    weights = os.path.join(root, f'{name}.pth')
    state = net.state_dict()
    torch.save({'params': state, 'params_ema': state}, weights)
    return opt, weights


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('models'))
    return {
        'edsr_plus': _make_model(root, 'edsr_plus', EDSR_PLUS.format(prompt_dim=512)),
        'edsr_plus_256': _make_model(root, 'edsr_plus_256', EDSR_PLUS.format(prompt_dim=256)),
        'rdn_plus': _make_model(root, 'rdn_plus', RDN_PLUS),
        'rdn': _make_model(root, 'rdn', RDN),
    }


def _clip_requests():
    """How often the CLI has asked for a CLIP encoder so far (built or reused: the real cache of
    :func:`pdnsr.inference.cached_prompt_encoder`, which builds the random-weight ViT-B-32 once for these tests)."""
    info = inference.cached_prompt_encoder.cache_info()
    return info.hits + info.misses


def _net(model):
    return load_network(*model, 'cpu')[0]


def tensor_to_bgr(t):
    return tensor_to_rgb(t)[..., ::-1]


def _psnr(a, b):
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def _cli(capsys, model, inp, out, *extra):
    """Run the CLI in-process on ``model`` = (option file, weights); returns (exit status, stderr)."""
    code = main(['--opt', model[0], '--weights', model[1], '--input', str(inp), '--output', str(out), *extra])
    return code, capsys.readouterr().err


def _lq(paired_data, key):
    return image_to_tensor(read_rgb(os.path.join(paired_data['lr'], f'{key}.png')), 'cpu')


# ---------------------------------------------------------------------------------------------------------------------
# library
def test_load_network_prefers_ema_and_strips_module_prefix(tmp_path, models):
    opt, weights = models['edsr_plus']
    ref = torch.load(weights, weights_only=True)['params_ema']
    bare = tmp_path / 'bare.pth'
    torch.save({f'module.{k}': v for k, v in ref.items()}, bare)
    for path in (weights, bare):
        torch.testing.assert_close(load_network(opt, path, 'cpu')[0].state_dict(), ref)


def test_the_network_the_checkpoint_records_needs_no_option_file(tmp_path, models):
    """A checkpoint pdnsr wrote records its network_g: no option file is needed; one without a record says to pass
    --opt."""
    opt, weights = models['edsr_plus']
    net, record, network_g = load_network(opt, weights, 'cpu')
    recorded = tmp_path / 'recorded.pth'
    state = net.state_dict()
    torch.save({'params': state, 'pdnsr': {'format': 1, 'network_g': network_g}}, recorded)
    up = Upsampler.from_checkpoint(recorded, device='cpu')
    assert type(up.net).__name__ == 'EDSRPlus' and up.scale == 2 and up.network_g == network_g
    torch.testing.assert_close(up.net.state_dict(), state)
    with pytest.raises(pdnsr_errors.UserError, match='does not record its network.*--opt'):
        Upsampler.from_checkpoint(weights, device='cpu')


def test_load_network_takes_the_weights_asked_for(tmp_path, models):
    # A checkpoint whose EMA and final weights differ (bench_quality.py scores the final ones: param_key='params').
    opt, weights = models['rdn']
    ckpt = torch.load(weights, map_location='cpu', weights_only=True)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in ckpt['params'].items()}
    both = tmp_path / 'both.pth'
    torch.save({'params': ckpt['params'], 'params_ema': ema}, both)
    for key, want in ((None, ema), ('params_ema', ema), ('params', ckpt['params'])):
        torch.testing.assert_close(load_network(opt, both, 'cpu', param_key=key)[0].state_dict(), want)
    with pytest.raises(ValueError, match=f'weights file {both} has neither params_x'):
        load_network(opt, both, 'cpu', param_key='params_x')


def test_bad_weights_name_the_first_mismatching_key(tmp_path, models, capsys):
    with pytest.raises(ValueError, match=r"edsr_plus\.pth.*missing key 'sfe1\.weight'"):  # EDSR+ keys in an RDN+
        load_network(models['rdn_plus'][0], models['edsr_plus'][1])
    small = _net(models['edsr_plus'])
    wrong = tmp_path / 'wrong.pth'
    state = small.state_dict()
    state['conv_first.weight'] = torch.zeros(4, 3, 3, 3)
    torch.save({'params': state}, wrong)
    with pytest.raises(ValueError, match=r"wrong\.pth.*'conv_first\.weight' has shape \(4, 3, 3, 3\).*\(8, 3, 3, 3\)"):
        load_network(models['edsr_plus'][0], wrong)
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_network(models['edsr_plus'][0], tmp_path / 'nope.pth')

    code, err = _cli(capsys, (models['edsr_plus'][0], str(wrong)), str(tmp_path), str(tmp_path / 'out'))
    assert code == 2
    assert err.count('\n') == 1 and 'conv_first.weight' in err and 'Traceback' not in err


def test_bad_option_file(tmp_path):
    opt = tmp_path / 'bad.yml'
    opt.write_text('network_g:\n  type: EDSRPlus\n  num_in_ch: 3\n  num_out_ch: 3\n  num_blocks: 2\n')
    with pytest.raises(ValueError, match='num_blocks'):
        read_network_options(opt)
    opt.write_text('name: x\n')
    with pytest.raises(ValueError, match='no network_g'):
        read_network_options(opt)
    opt.write_text('network_g:\n  type: NoSuchNet\n')
    with pytest.raises(ValueError, match='NoSuchNet'):
        read_network_options(opt)


@pytest.mark.parametrize('name', ['edsr_plus', 'rdn_plus'])
def test_tiled_matches_whole(paired_data, models, clip_encoder, name):
    """Tiles with context covering the receptive field give the whole-image result, odd sizes and borders included;
    the attention masks are stitched the same way."""
    net = _net(models[name])
    key = paired_data['keys'][0]
    lq = torch.cat([_lq(paired_data, key), _lq(paired_data, paired_data['keys'][1])])[:, :, :47, :45]
    prompt = clip_encoder.encode_text([SAMPLE_CAPTIONS[k][0] for k in paired_data['keys'][:2]])
    whole, masks = super_resolve(net, lq, prompt, keep_attention=True)
    assert whole.shape == (2, 3, 94, 90) and whole.dtype == torch.float32
    assert whole.min() >= 0 and whole.max() <= 1
    assert sorted(masks) == [0, 1] and masks[0].shape == (2, 1, 47, 45)

    tiled, tiled_masks = super_resolve(net, lq, prompt, tile=16, tile_pad=12, keep_attention=True)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    for i in masks:
        torch.testing.assert_close(tiled_masks[i], masks[i], atol=1e-5, rtol=0)
    assert _psnr(super_resolve(net, lq, prompt, tile=16), whole) >= 40  # default pad 32
    # Too little context is visibly different: the test above is not vacuous.
    assert _psnr(super_resolve(net, lq, prompt, tile=16, tile_pad=0), whole) < 60


def test_super_resolve_prompt_matters_and_baseline_ignores_it(paired_data, models, clip_encoder):
    lq = _lq(paired_data, paired_data['keys'][0])
    net = _net(models['edsr_plus'])
    a, b = clip_encoder.encode_text(['a cat', 'a rocket on a launch pad'])
    sr_a = super_resolve(net, lq, a[None])
    assert not torch.equal(sr_a, super_resolve(net, lq, b[None]))
    assert torch.isfinite(super_resolve(net, lq, None)).all()
    base = _net(models['rdn'])
    torch.testing.assert_close(super_resolve(base, lq, a[None]), super_resolve(base, lq), atol=0, rtol=0)
    with pytest.raises(ValueError, match='scale'):
        super_resolve(net, lq, scale=4)


def test_upsampler_enhance_is_super_resolve_on_rgb_and_batches_prompts(paired_data, models, clip_encoder):
    """enhance: (h, w, 3) uint8 RGB in, (2h, 2w, 3) out, the network's output rounded; several prompts in one batch
    give what each gives alone; a text, an image array, 'self' and an embedding are all prompts; masks come with
    attention; grey and RGBA images are converted."""
    up = Upsampler.from_checkpoint(models['edsr_plus'][1], models['edsr_plus'][0], 'cpu', clip_pretrained='none')
    key = paired_data['keys'][0]
    rgb = read_rgb(os.path.join(paired_data['lr'], f'{key}.png'))
    text = clip_encoder.encode_text(['a cup of coffee'])
    expected = tensor_to_rgb(super_resolve(up.net, image_to_tensor(rgb, 'cpu'), text))
    np.testing.assert_array_equal(up.enhance(rgb, 'a cup of coffee'), expected)
    np.testing.assert_array_equal(up.enhance(rgb, text[0]), expected)

    photo = read_rgb(os.path.join(paired_data['hr'], f'{paired_data["keys"][1]}.png'))
    prompts = ['a cup of coffee', photo, 'self', None]
    batch = up.enhance_many(rgb, prompts, attention=True)
    for prompt, (sr, masks) in zip(prompts, batch):
        alone, alone_masks = up.enhance(rgb, prompt, attention=True)
        assert sr.shape == (2 * rgb.shape[0], 2 * rgb.shape[1], 3) and sr.dtype == np.uint8
        assert np.abs(sr.astype(int) - alone.astype(int)).max() <= 1
        assert sorted(masks) == [0, 1] and masks[0].shape == rgb.shape[:2]
        np.testing.assert_allclose(masks[1], alone_masks[1], atol=1e-5)
    np.testing.assert_array_equal(batch[2][0], up.enhance(rgb, rgb))  # 'self' is the image itself
    assert len({sr.tobytes() for sr, _ in batch}) == 4
    assert up.enhance(rgb, None, attention=[-1])[1].keys() == {1}
    np.testing.assert_array_equal(as_rgb(rgb[..., 0]), np.repeat(rgb[..., :1], 3, axis=2))
    np.testing.assert_array_equal(as_rgb(np.dstack([rgb, rgb[..., :1]])), rgb)
    with pytest.raises(ValueError, match='uint8'):
        up.enhance(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="'self' is the input image"):
        up.encode('self')


# ---------------------------------------------------------------------------------------------------------------------
# CLI
@pytest.mark.parametrize('name, yaml_text', [('swinir', SWINIR), ('rrdbnet_x2', RRDBNET_X2)])
def test_baselines_that_need_a_multiple_take_any_size(tmp_path, capsys, name, yaml_text):
    """pdnsr-infer on a 17 x 19 image with basicsr's SwinIR (window 8) and RRDBNet x2 (pixel-unshuffle by 2), which
    fail on such sizes by themselves: exactly 34 x 38 out, whole and tiled, and the whole image is the network on
    the image reflection-padded at the bottom / right, cropped."""
    model = _make_model(str(tmp_path), name, yaml_text)
    image = tmp_path / 'in.png'
    rgb = np.random.default_rng(0).integers(0, 256, (17, 19, 3), dtype=np.uint8)
    cv2.imwrite(str(image), rgb[..., ::-1])
    net = _net(model)
    multiple = 8 if name == 'swinir' else 2
    with pytest.raises((RuntimeError, AssertionError)):  # the network alone: what pdnsr-infer ran into
        net(image_to_tensor(rgb, 'cpu'))
    with torch.no_grad():
        padded = torch.nn.functional.pad(image_to_tensor(rgb, 'cpu'), (0, -19 % multiple, 0, -17 % multiple), 'reflect')
        expected = tensor_to_bgr(net(padded)[..., :34, :38])
    for extra in ([], ['--tile', '8', '--tile-pad', '4']):
        out = tmp_path / f'out{len(extra)}'
        code, err = _cli(capsys, model, image, out, *extra)
        assert code == 0 and 'Traceback' not in err, err
        sr = cv2.imread(str(out / 'in_pdnsr.png'))
        assert sr.shape == (34, 38, 3)
        if not extra:
            np.testing.assert_array_equal(sr, expected)


@pytest.mark.slow
def test_cli_text_prompt_real_encoder(tmp_path, paired_data, models, clip_encoder, capsys):
    """Builds its own random-weight CLIP (--clip-pretrained none) and matches the library call."""
    model = models['edsr_plus']
    out = tmp_path / 'out'
    key = paired_data['keys'][0]
    code, err = _cli(
        capsys,
        model,
        os.path.join(paired_data['lr'], f'{key}.png'),
        out,
        '--prompt',
        'a cup of coffee',
        '--clip-pretrained',
        'none',
        '--tile',
        '20',
    )
    assert code == 0, err
    assert os.listdir(out) == [f'{key}_pdnsr.png']
    written = cv2.imread(str(out / f'{key}_pdnsr.png'))
    expected = tensor_to_bgr(
        super_resolve(_net(models['edsr_plus']), _lq(paired_data, key), clip_encoder.encode_text(['a cup of coffee']))
    )
    assert written.shape == (96, 96, 3)
    assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1


def test_cli_image_prompt(tmp_path, paired_data, models, clip_encoder, capsys):
    model = models['rdn_plus']
    lr = paired_data['lr']
    prompt_file = os.path.join(paired_data['hr'], f'{paired_data["keys"][1]}.png')
    outs = {}
    for view in ('flip', 'identity'):
        out = tmp_path / view
        code, err = _cli(
            capsys,
            model,
            os.path.join(lr, 'coffee.png'),
            out,
            '--prompt-image',
            prompt_file,
            '--prompt-view',
            view,
            '--clip-pretrained',
            'none',
            '--suffix',
            'x2',
        )
        assert code == 0, err
        outs[view] = cv2.imread(str(out / 'coffee_x2.png'))
    assert outs['flip'].shape == (96, 96, 3)
    assert not np.array_equal(outs['flip'], outs['identity'])
    # The CLI's encoder is the random-weight ViT-B-32 of seed 0, the session's: the same prompt, the same output.
    prompt = clip_encoder.encode_images([read_rgb(prompt_file)], view='flip')
    expected = tensor_to_bgr(super_resolve(_net(model), _lq(paired_data, 'coffee'), prompt))
    assert np.abs(outs['flip'].astype(int) - expected.astype(int)).max() <= 1


def test_cli_prompt_image_self_uses_each_input(tmp_path, paired_data, models, capsys):
    """--prompt-image self: every input is encoded as its own prompt, the same as naming that file."""
    model = models['edsr_plus']
    keys = paired_data['keys'][:2]
    inp = tmp_path / 'in'
    inp.mkdir()
    for key in keys:
        shutil.copy(os.path.join(paired_data['lr'], f'{key}.png'), inp / f'{key}.png')
    code, err = _cli(capsys, model, inp, tmp_path / 'self', '--prompt-image', 'self', '--clip-pretrained', 'none')
    assert code == 0, err
    for key in keys:
        one = tmp_path / key
        code, err = _cli(
            capsys,
            model,
            inp / f'{key}.png',
            one,
            '--prompt-image',
            str(inp / f'{key}.png'),
            '--clip-pretrained',
            'none',
        )
        assert code == 0, err
        assert np.array_equal(
            cv2.imread(str(tmp_path / 'self' / f'{key}_pdnsr.png')), cv2.imread(str(one / f'{key}_pdnsr.png'))
        )


def test_cli_captions_one_per_image_missing_key_skipped(tmp_path, paired_data, models, clip_encoder, capsys):
    model = models['edsr_plus']
    keys = paired_data['keys']
    captions = tmp_path / 'captions.json'
    captions.write_text(json.dumps({k: SAMPLE_CAPTIONS[k] for k in keys[1:]}))
    out = tmp_path / 'out'
    code, err = _cli(
        capsys, model, paired_data['lr'], str(out), '--captions', str(captions), '--clip-pretrained', 'none'
    )
    assert code == 1
    assert f'{keys[0]}.png' in err and 'no caption' in err
    assert sorted(os.listdir(out)) == sorted(f'{k}_pdnsr.png' for k in keys[1:])
    net = _net(models['edsr_plus'])
    for key in keys[1:3]:  # each image got its own first caption, not the same one
        expected = tensor_to_bgr(
            super_resolve(net, _lq(paired_data, key), clip_encoder.encode_text([SAMPLE_CAPTIONS[key][0]]))
        )
        written = cv2.imread(str(out / f'{key}_pdnsr.png'))
        assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1


def test_cli_no_prompt_warns(tmp_path, paired_data, models, capsys):
    model = models['edsr_plus']
    before = _clip_requests()
    code, err = _cli(capsys, model, paired_data['lr'], str(tmp_path), '--clip-pretrained', 'none')
    assert code == 0
    assert 'zero prompt' in err and 'uniform 0.5' in err
    assert len(os.listdir(tmp_path)) == len(paired_data['keys'])
    assert _clip_requests() == before  # CLIP is not loaded without a prompt


def test_cli_baseline_ignores_prompt_and_reads_grey(tmp_path, paired_data, models, capsys):
    model = models['rdn']
    before = _clip_requests()
    grey = tmp_path / 'in' / 'grey.png'
    grey.parent.mkdir()
    cv2.imwrite(str(grey), cv2.imread(os.path.join(paired_data['lr'], 'coffee.png'), cv2.IMREAD_GRAYSCALE))
    code, err = _cli(
        capsys, model, str(grey.parent), str(tmp_path / 'out'), '--prompt', 'a cup', '--clip-pretrained', 'none'
    )
    assert code == 0, err
    assert 'baseline' in err and 'ignored' in err
    assert cv2.imread(str(tmp_path / 'out' / 'grey_pdnsr.png')).shape == (96, 96, 3)
    assert _clip_requests() == before


def test_cli_unreadable_image_reported_others_written(tmp_path, paired_data, models, capsys):
    model = models['rdn']
    inp = tmp_path / 'in'
    shutil.copytree(paired_data['lr'], inp)
    (inp / 'broken.png').write_bytes(b'this is not a png at all' * 10)
    out = tmp_path / 'out'
    code, err = _cli(capsys, model, str(inp), str(out))
    assert code == 1
    assert 'broken.png' in err and 'Traceback' not in err
    assert sorted(os.listdir(out)) == sorted(f'{k}_pdnsr.png' for k in paired_data['keys'])


def test_cli_attention_pngs(tmp_path, paired_data, models, capsys):
    model = models['edsr_plus']
    out = tmp_path / 'out'
    code, err = _cli(
        capsys,
        model,
        os.path.join(paired_data['lr'], 'chelsea.png'),
        str(out),
        '--prompt',
        'a cat',
        '--clip-pretrained',
        'none',
        '--save-attention',
        '--tile',
        '32',
    )
    assert code == 0, err
    assert sorted(os.listdir(out)) == ['chelsea_attention_dcm0.png', 'chelsea_attention_dcm1.png', 'chelsea_pdnsr.png']
    assert cv2.imread(str(out / 'chelsea_pdnsr.png')).shape == (96, 96, 3)
    bar = colour_bar(96)
    for i in (0, 1):  # the mask over the SR image, then its colour bar from 0 to 1
        picture = cv2.imread(str(out / f'chelsea_attention_dcm{i}.png'))
        assert picture.shape == (96, 96 + bar.shape[1], 3)
        np.testing.assert_array_equal(picture[:, 96:], bar)
    code, err = _cli(capsys, model, paired_data['lr'], str(out), '--save-attention', '--attention-dcms', '5')
    assert code == 2 and 'has 2 DCMs' in err


@pytest.mark.parametrize(
    'extra, message',
    [
        (['--fp16', '--device', 'cpu'], '--fp16 needs a CUDA device'),
        (['--prompt', 'x', '--clip-pretrained', '/no/such/open_clip_model.bin'], 'does not exist'),
        (['--tile', '0'], '--tile must be a positive integer'),
    ],
)
def test_cli_user_errors_exit_2_with_one_line(tmp_path, paired_data, models, capsys, extra, message):
    model = models['edsr_plus']
    code, err = _cli(capsys, model, paired_data['lr'], str(tmp_path / 'out'), *extra)
    lines = [line for line in err.splitlines() if 'error:' in line]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert 'Traceback' not in err
    assert not (tmp_path / 'out').exists()


def test_cli_prompt_dim_mismatch_names_both(tmp_path, paired_data, models, capsys):
    model = models['edsr_plus_256']
    code, err = _cli(capsys, model, paired_data['lr'], str(tmp_path), '--prompt', 'a cat', '--clip-pretrained', 'none')
    assert code == 2 and '512' in err and 'prompt_dim=256' in err


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message on a machine without CUDA')
def test_cli_cuda_without_cuda(tmp_path, paired_data, models, capsys):
    model = models['edsr_plus']
    code, err = _cli(capsys, model, paired_data['lr'], str(tmp_path), '--device', 'cuda')
    assert code == 2 and 'no CUDA device' in err


@pytest.mark.slow
def test_script_entry_point_runs_as_a_process(tmp_path, paired_data, models):
    """The thin script runs as a user would start it; a user error is one line and exit status 2, no traceback."""
    model = models['edsr_plus']
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'scripts', 'inference_pdnsr.py')
    argv = ['--opt', model[0], '--weights', model[1], '--input', paired_data['lr'], '--output', str(tmp_path)]
    proc = commands.run([sys.executable, script, *argv, '--fp16', '--device', 'cpu'])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith('inference_pdnsr.py: error: --fp16 needs a CUDA device')
    assert 'Traceback' not in proc.stderr
