"""scripts/visualize_attention.py: one image, several prompts -> a readable PNG figure."""

import os

import cv2
import pytest
import torch

from conftest import load_script
from pdnsr import inference
from pdnsr import options as opts
from pdnsr.archs.network_options import build_network
from pdnsr.inference import read_network_options
from pdnsr.utils.visualization import colour_bar

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def script():
    return load_script('visualize_attention')


@pytest.fixture
def model(tmp_path):
    """A tiny EDSR+ and its checkpoint (no record: the tests pass --clip-pretrained none, the random-weight
    ViT-B-32 that :func:`pdnsr.inference.cached_prompt_encoder` builds once)."""
    opt = opts.write_options(dict(network_g=opts.network('EDSRPlus', 2, num_feat=8, num_block=2)), tmp_path / 'net.yml')
    torch.manual_seed(0)
    state = build_network(read_network_options(opt)).state_dict()
    weights = tmp_path / 'net.pth'
    torch.save({'params': state, 'params_ema': state}, weights)
    return str(opt), str(weights)


def _argv(model, paired_data, output, *extra):
    image = os.path.join(paired_data['lr'], 'astronaut.png')
    return ['--opt', model[0], '--weights', model[1], '--image', image, '--output', str(output), *extra]


@pytest.mark.parametrize('background', ['sr', 'lr'])
def test_figure_written(tmp_path, paired_data, model, script, capsys, background):
    out = tmp_path / 'figs' / 'fig.png'
    prompts = ['an astronaut in a white spacesuit', 'an american flag behind a person with a long caption that wraps']
    argv = _argv(model, paired_data, out, '--clip-pretrained', 'none', '--background', background, '--dcm', '0')
    for p in prompts:
        argv += ['--prompt', p]
    assert script.main(argv) == 0, capsys.readouterr().err
    fig = cv2.imread(str(out))
    assert fig is not None and fig.ndim == 3
    # Three 96x96 panels (image + one per prompt) with gaps, a caption strip under them, the masks' colour bar.
    bar = colour_bar(fig.shape[0])
    assert 3 * 96 < fig.shape[1] - bar.shape[1] < 3 * 96 + 30 and fig.shape[0] > 96
    assert (fig[:, -bar.shape[1] :] == bar).all()
    strip = fig[96:]
    assert (strip < 128).any()  # some text was drawn
    assert os.listdir(out.parent) == ['fig.png']  # no temporary file left


def test_bad_dcm_index(tmp_path, paired_data, model, script, capsys):
    argv = _argv(model, paired_data, tmp_path / 'fig.png', '--clip-pretrained', 'none', '--prompt', 'a', '--dcm', '7')
    assert script.main(argv) == 2
    assert 'has 2 DCMs' in capsys.readouterr().err
    assert not (tmp_path / 'fig.png').exists()


def test_wrap_text(script):
    lines = script.wrap_text('a b c d e f g h i j k l m n o p', width=40, scale=0.5)
    assert len(lines) > 1 and ' '.join(lines) == 'a b c d e f g h i j k l m n o p'


@pytest.mark.parametrize('where', ['folder', 'under_a_file', 'no_suffix'])
def test_bad_output_refused_before_any_work(tmp_path, paired_data, model, script, capsys, where):
    """The output is checked first: no network is loaded, no CLIP built, nothing written."""
    (tmp_path / 'file.txt').write_text('x')
    output = {'folder': tmp_path, 'under_a_file': tmp_path / 'file.txt' / 'fig.png', 'no_suffix': tmp_path / 'fig'}
    before = inference.cached_prompt_encoder.cache_info()
    argv = _argv(model, paired_data, output[where], '--clip-pretrained', 'none', '--prompt', 'a')
    assert script.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and '--output' in err and 'Traceback' not in err, err
    assert inference.cached_prompt_encoder.cache_info() == before
    assert sorted(os.listdir(tmp_path)) == ['file.txt', 'net.pth', 'net.yml']
