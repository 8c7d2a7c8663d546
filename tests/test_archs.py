"""Host networks: every scale, checkpoint compatibility with basicsr's EDSR / RCAN, and clear errors."""

import pytest
import torch
from basicsr.archs import build_network
from basicsr.archs.edsr_arch import EDSR
from basicsr.archs.rcan_arch import RCAN

from pdnsr.archs import EDSRPlus, RCANPlus, dcm_modules
from pdnsr.archs.rcan_plus_arch import dcm_positions

PROMPT_DIM = 24
TINY = {
    'EDSR': dict(num_feat=16, num_block=2),
    'EDSRPlus': dict(num_feat=16, num_block=2, prompt_dim=PROMPT_DIM),
    'RCAN': dict(num_feat=16, num_group=2, num_block=3, squeeze_factor=4),
    'RCANPlus': dict(num_feat=16, num_group=2, num_block=3, squeeze_factor=4, prompt_dim=PROMPT_DIM),
    'RDN': dict(num_feat=16, num_block=2, num_layer=3, growth=8),
    'RDNPlus': dict(num_feat=16, num_block=2, num_layer=3, growth=8, prompt_dim=PROMPT_DIM),
}


def build(name, scale, **kw):
    return build_network(dict(type=name, num_in_ch=3, num_out_ch=3, upscale=scale, **{**TINY[name], **kw}))


@pytest.mark.parametrize('name', ['EDSRPlus', 'RCANPlus', 'RDN', 'RDNPlus'])
@pytest.mark.parametrize('scale', [2, 3, 4, 8, 16])
def test_forward_backward_every_scale(name, scale):
    torch.manual_seed(0)
    net = build(name, scale)
    x = torch.rand(2, 3, 5, 7, requires_grad=True)
    y = net(x, torch.randn(2, PROMPT_DIM)) if name.endswith('Plus') else net(x)
    assert y.shape == (2, 3, 5 * scale, 7 * scale)
    y.mean().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize('name', ['EDSRPlus', 'RCANPlus', 'RDN', 'RDNPlus'])
def test_unsupported_scale_lists_supported_ones(name):
    with pytest.raises(ValueError, match=r'upscale=5 is not supported; use one of \[2, 3, 4, 8, 16\]'):
        build(name, 5)


@pytest.mark.parametrize('plus,base', [(EDSRPlus, EDSR), (RCANPlus, RCAN)])
def test_baseline_checkpoint_loads_and_zeroed_dcms_reproduce_baseline(plus, base):
    torch.manual_seed(0)
    kw = {k: v for k, v in TINY[base.__name__].items()}
    baseline = base(3, 3, upscale=2, **kw).eval()
    net = plus(3, 3, upscale=2, prompt_dim=PROMPT_DIM, **kw).eval()
    result = net.load_state_dict(baseline.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.startswith('dcms.') for k in result.missing_keys)
    with torch.no_grad():
        for dcm in dcm_modules(net):
            dcm.weight.zero_()
            dcm.bias.zero_()
        x = torch.rand(2, 3, 9, 11)
        torch.testing.assert_close(net(x, torch.randn(2, PROMPT_DIM)), baseline(x), atol=1e-5, rtol=0)
        # ... and with the initial DCMs, the prompt does change the output.
        fresh = plus(3, 3, upscale=2, prompt_dim=PROMPT_DIM, **kw).eval()
        fresh.load_state_dict(baseline.state_dict(), strict=False)
        assert not torch.allclose(fresh(x, torch.randn(2, PROMPT_DIM)), fresh(x, torch.randn(2, PROMPT_DIM)))


def test_rcan_dcm_placement():
    assert dcm_positions(20, 3) == [6, 12, 19]
    assert dcm_positions(16, 3) == [4, 10, 15]
    assert dcm_positions(2, 3) == [0, 0, 1]
    net = build('RCANPlus', 2)
    assert len(dcm_modules(net)) == 2 * 3


def test_edsr_and_rdn_have_one_dcm_per_block():
    assert len(dcm_modules(build('EDSRPlus', 2))) == TINY['EDSRPlus']['num_block']
    assert len(dcm_modules(build('RDNPlus', 2))) == TINY['RDNPlus']['num_block']


@pytest.mark.parametrize('name', ['EDSRPlus', 'RCANPlus', 'RDNPlus'])
def test_dcm_options_reach_every_dcm_and_unknown_ones_are_named(name):
    net = build(name, 2, dcm=dict(num_kernels=2, kernel_size=1, use_attention=False, temperature=5.0))
    for dcm in dcm_modules(net):
        assert dcm.weight.shape[0] == 2 and dcm.kernel_size == 1 and not dcm.use_attention
        assert dcm.temperature.item() == 5.0
    with pytest.raises(ValueError, match=r"unknown DCM option\(s\) \['kernal_size'\]"):
        build(name, 2, dcm=dict(kernal_size=3))


@pytest.mark.parametrize('name', ['EDSRPlus', 'RCANPlus', 'RDNPlus'])
def test_prompt_errors_and_missing_prompt(name):
    net = build(name, 2)
    x = torch.rand(2, 3, 6, 6)
    with pytest.raises(ValueError, match=rf'size 10 .*prompt_dim={PROMPT_DIM}'):
        net(x, torch.randn(2, 10))
    with pytest.raises(ValueError, match='prompt batch size 1 differs from image batch size 2'):
        net(x, torch.randn(1, PROMPT_DIM))
    out = net(x, None)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, net(x, torch.zeros(2, PROMPT_DIM)))


def test_rgb_mean_follows_the_device_and_is_not_saved():
    net = build('RDNPlus', 2).double()
    assert 'mean' not in net.state_dict()
    assert net(torch.rand(1, 3, 4, 4, dtype=torch.float64), None).dtype == torch.float64
    assert 'mean' in dict(build('RCANPlus', 2).named_buffers())


def test_plus_checkpoint_round_trip_keeps_temperature():
    net = build('EDSRPlus', 2)
    for dcm in dcm_modules(net):
        dcm.set_temperature(4.0)
    other = build('EDSRPlus', 2)
    other.load_state_dict(net.state_dict())
    assert all(d.temperature.item() == 4.0 for d in dcm_modules(other))
