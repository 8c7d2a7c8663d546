"""The compact kernel bank against the converted paper bank, the checkpoint converter, and the eval-time cache."""

import os
import sys

import commands
import pytest
import torch
from basicsr.archs import build_network

from pdnsr.archs import DynamicCorrelationModule, convert_state_dict_to_compact, dcm_modules
from pdnsr.archs.dcm_arch import kernel_cache
from pdnsr.inference import super_resolve

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C, D = 6, 10

ABLATIONS = [
    dict(),
    dict(use_attention=False),
    dict(use_dynamic=False),
    dict(use_attention=False, use_dynamic=False),
    dict(kernel_size=5, num_kernels=2),
]


def paper_and_compact(dtype=torch.float64, **kw):
    """A paper-layout DCM with large random parameters and the compact DCM converted from it."""
    torch.manual_seed(0)
    paper = DynamicCorrelationModule(C, D, **kw).to(dtype)
    with torch.no_grad():  # larger than the init, so every term of the fold matters
        paper.proj.bias.normal_()
        paper.bias.normal_()
        paper.weight.normal_()
    paper.set_temperature(2.0)
    compact = DynamicCorrelationModule(C, D, bank='compact', **kw).to(dtype)
    state, count = convert_state_dict_to_compact(paper.state_dict())
    assert count == 1
    compact.load_state_dict(state, strict=True)
    return paper, compact


def inputs(dtype=torch.float64, batch=3):
    gen = torch.Generator().manual_seed(1)
    return (
        torch.randn(batch, C, 7, 9, generator=gen, dtype=dtype),
        torch.randn(batch, D, generator=gen, dtype=dtype),
    )


def output_and_grads(dcm, x, p):
    dcm.zero_grad()
    x = x.clone().requires_grad_()
    out = dcm(x, p)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), x.grad, {n: q.grad for n, q in dcm.named_parameters()}


@pytest.mark.parametrize('kw', ABLATIONS)
def test_compact_equals_converted_paper_bank_with_gradients(kw):
    paper, compact = paper_and_compact(**kw)
    x, p = inputs()
    out_p, gx_p, g_p = output_and_grads(paper, x, p)
    out_c, gx_c, g_c = output_and_grads(compact, x, p)
    close = dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_c, out_p, **close)
    torch.testing.assert_close(gx_c, gx_p, **close)
    for name in g_c:  # parameters both layouts share get the same gradient ...
        if name in g_p and name not in ('proj.weight', 'proj.bias'):
            torch.testing.assert_close(g_c[name], g_p[name], **close)
    # ... and the paper bank's gradients are the compact ones pulled back through the fold (chain rule).
    proj_w, proj_b = paper.proj.weight.detach().flatten(1), paper.proj.bias.detach()
    expected_w = torch.einsum('nocij,dc->nodij', g_c['kernel'], proj_w) + torch.einsum(
        'noij,d->nodij', g_c['mask_kernel'], proj_b
    )
    torch.testing.assert_close(g_p['weight'], expected_w, **close)
    weight = paper.weight.detach()
    fold_w = torch.einsum('nodij,nocij->dc', weight, g_c['kernel']).view_as(paper.proj.weight)
    fold_b = torch.einsum('nodij,noij->d', weight, g_c['mask_kernel'])
    mask_w = g_c['proj.weight'] if 'proj.weight' in g_c else 0
    mask_b = g_c['proj.bias'] if 'proj.bias' in g_c else 0
    torch.testing.assert_close(g_p['proj.weight'], mask_w + fold_w, **close)
    torch.testing.assert_close(g_p['proj.bias'], mask_b + fold_b, **close)


def test_compact_parameters_and_size():
    dcm = DynamicCorrelationModule(64, 512, bank='compact')
    shapes = {n: tuple(q.shape) for n, q in dcm.named_parameters()}
    assert shapes['kernel'] == (4, 64, 64, 3, 3)
    assert shapes['mask_kernel'] == (4, 64, 3, 3)
    assert shapes['bias'] == (4, 64)
    assert shapes['proj.weight'] == (512, 64, 1, 1) and 'zeta' in shapes and 'router.0.weight' in shapes
    assert 'weight' not in shapes
    paper = DynamicCorrelationModule(64, 512)
    count = lambda m: sum(q.numel() for q in m.parameters())  # noqa: E731
    assert count(paper) > 1_250_000 and count(dcm) < 260_000
    # Without the mask the compact bank has no use for the projection at all.
    assert 'proj.weight' not in dict(
        DynamicCorrelationModule(8, 16, bank='compact', use_attention=False).named_parameters()
    )


def test_unknown_bank_and_literal_path_are_refused():
    with pytest.raises(ValueError, match=r"bank must be one of \['paper', 'compact'\], got 'small'"):
        DynamicCorrelationModule(4, 8, bank='small')
    with pytest.raises(ValueError, match="forward_literal needs bank='paper'"):
        DynamicCorrelationModule(4, 8, bank='compact').forward_literal(torch.zeros(1, 4, 3, 3), None)


TINY = {
    'EDSRPlus': dict(num_feat=8, num_block=2),
    'RCANPlus': dict(num_feat=8, num_group=2, num_block=3, squeeze_factor=4),
    'RDNPlus': dict(num_feat=8, num_block=2, num_layer=2, growth=4),
}


def build(name, bank, **dcm):
    opt = dict(type=name, num_in_ch=3, num_out_ch=3, upscale=2, prompt_dim=D, dcm=dict(bank=bank, **dcm))
    return build_network({**opt, **TINY[name]}).double().eval()


def randomise(net):
    """Push every DCM far from its near-zero init so the comparison sees all terms."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for dcm in dcm_modules(net):
            for q in dcm.parameters():
                q.copy_(torch.randn(q.shape, generator=gen, dtype=q.dtype) * 0.3)
            dcm.set_temperature(3.0)


@pytest.mark.parametrize('name', list(TINY))
def test_networks_convert_exactly(name):
    torch.manual_seed(0)
    paper = build(name, 'paper')
    randomise(paper)
    compact = build(name, 'compact')
    state, count = convert_state_dict_to_compact(paper.state_dict())
    assert count == len(dcm_modules(paper))
    compact.load_state_dict(state, strict=True)
    x, p = torch.rand(2, 3, 6, 7, dtype=torch.float64), torch.randn(2, D, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(compact(x, p), paper(x, p), rtol=1e-10, atol=1e-10)
    assert [float(m.temperature) for m in dcm_modules(compact)] == [3.0] * count


@pytest.mark.slow
def test_convert_script_writes_params_and_params_ema(tmp_path):
    torch.manual_seed(0)
    paper = build('EDSRPlus', 'paper', use_attention=False).float()
    randomise(paper)
    ema = {k: v + 0.01 if v.is_floating_point() else v for k, v in paper.state_dict().items()}
    src, dst = tmp_path / 'paper.pth', tmp_path / 'compact.pth'
    torch.save({'params': paper.state_dict(), 'params_ema': ema}, src)
    script = os.path.join(REPO_ROOT, 'scripts', 'convert_dcm_bank.py')
    done = commands.run([sys.executable, script, str(src), str(dst)])
    assert done.returncode == 0, done.stderr
    assert 'params: 2 DCMs, params_ema: 2 DCMs converted' in done.stdout
    converted = torch.load(dst, weights_only=True)
    x, p = torch.rand(1, 3, 5, 6), torch.randn(1, D)
    for key, source in (('params', paper.state_dict()), ('params_ema', ema)):
        compact = build('EDSRPlus', 'compact', use_attention=False).float()
        compact.load_state_dict(converted[key], strict=True)
        reference = build('EDSRPlus', 'paper', use_attention=False).float()
        reference.load_state_dict(source)
        with torch.no_grad():
            torch.testing.assert_close(compact(x, p), reference(x, p), rtol=1e-4, atol=1e-5)
    # Converting again finds nothing to convert: one clear error, exit status 2, nothing written.
    again = commands.run([sys.executable, script, str(dst), str(tmp_path / 'x.pth')])
    assert again.returncode == 2
    assert 'has no DCM with the paper kernel bank' in again.stderr and 'Traceback' not in again.stderr
    assert not (tmp_path / 'x.pth').exists()
    missing = commands.run([sys.executable, script, str(tmp_path / 'no.pth'), str(dst)])
    assert missing.returncode == 2 and 'no.pth does not exist' in missing.stderr


# ------------------------------------------------------------------------------------------------- eval-time cache
@pytest.mark.parametrize('bank', ['paper', 'compact'])
def test_kernel_cache_reuses_kernels_inside_its_block_only(bank):
    torch.manual_seed(0)
    dcm = DynamicCorrelationModule(C, D, bank=bank).double().eval()
    x, p = inputs()
    with torch.no_grad():
        assert dcm.mixed_kernels(p, x) is not dcm.mixed_kernels(p, x)  # outside a block: never cached
        with kernel_cache(dcm):
            first = dcm.mixed_kernels(p, x)
            assert dcm.mixed_kernels(p, x) is first  # same prompt: computed once
            assert dcm.mixed_kernels(p.clone(), x) is not first  # another prompt tensor
            p2 = p.clone()
            kept = dcm.mixed_kernels(p2, x)
            p2.mul_(2)  # the same tensor changed in place
            assert dcm.mixed_kernels(p2, x) is not kept
            assert dcm.mixed_kernels(p, x[:1]) is not first  # another batch
            with kernel_cache(dcm):  # a nested block keeps the outer one's entries
                assert dcm.mixed_kernels(p, x) is first
            assert dcm.mixed_kernels(p, x) is first
            fresh = [t.clone() for t in first[:3]]
        assert dcm._kernel_cache is None
        for a, b in zip(dcm.mixed_kernels(p, x)[:3], fresh):  # what the cache returned is what a fresh call gives
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_no_cache_in_train_mode_or_with_autograd():
    dcm = DynamicCorrelationModule(C, D).double()
    x, p = inputs()
    with kernel_cache(dcm):
        assert dcm.mixed_kernels(p, x) is not dcm.mixed_kernels(p, x)  # train mode
        dcm.eval()
        out = dcm(x.requires_grad_(), p)  # eval with autograd on: gradients need a fresh graph each call
        assert not dcm._kernel_cache
        out.sum().backward()
        dcm(x, p).sum().backward()  # a second backward through a new graph works


def test_ema_style_data_updates_never_meet_stale_kernels():
    """basicsr's EMA writes parameters through ``.data`` (no version bump); with the same prompt tensor every call
    after such a write must give what a freshly built network with those weights gives."""
    torch.manual_seed(0)
    net = build('EDSRPlus', 'paper')  # float64, eval
    randomise(net)
    lq, prompt = torch.rand(1, 3, 6, 6, dtype=torch.float64), torch.randn(1, D, dtype=torch.float64)
    with torch.no_grad():
        before = super_resolve(net, lq, prompt)
        for param in net.parameters():  # what BaseModel.model_ema does
            param.data.mul_(0.5).add_(torch.randn_like(param), alpha=0.5)
        after = super_resolve(net, lq, prompt)
        fresh = build('EDSRPlus', 'paper')
        fresh.load_state_dict(net.state_dict())
        torch.testing.assert_close(after, super_resolve(fresh, lq, prompt), rtol=0, atol=1e-6)
        assert not torch.allclose(before, after)
        torch.testing.assert_close(net(lq, prompt), fresh(lq, prompt), rtol=0, atol=1e-12)  # plain calls too


@pytest.mark.parametrize('bank', ['paper', 'compact'])
def test_bf16_autocast_gradients_close_to_fp32(bank):
    """The hand-written backward passes (mask, masked conv) under autocast: finite and near float32's."""
    torch.manual_seed(0)
    dcm = DynamicCorrelationModule(16, 32, bank=bank)
    x = torch.randn(2, 16, 12, 12)
    p = torch.randn(2, 32)
    _, gx32, g32 = output_and_grads(dcm, x, p)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, gx16, g16 = output_and_grads(dcm, x, p)
    assert out.dtype == torch.bfloat16 and gx16.dtype == torch.float32
    for name, grad in [('x', gx16), *g16.items()]:
        ref = gx32 if name == 'x' else g32[name]
        assert torch.isfinite(grad).all(), name
        # zeta's gradient is one sum of many cancelling terms: bf16 rounding of the upstream gradient shows more.
        tol = 0.25 if grad.numel() == 1 else 0.05
        assert (grad.float() - ref).norm() <= tol * ref.norm() + 1e-6, name


def test_cache_hits_across_tiles_for_none_and_converted_prompts():
    """Tiles of one image call the network with one prompt: each DCM mixes its kernels once per block."""
    net = build('EDSRPlus', 'compact')  # float64, eval
    tiles = torch.rand(2, 3, 6, 6, dtype=torch.float64).split(3, dim=3)
    for prompt in (torch.randn(2, D, dtype=torch.float32), None):  # float32 prompt, float64 features: converted
        with torch.no_grad(), kernel_cache(net):
            net(tiles[0], prompt)
            first = [dict(dcm._kernel_cache) for dcm in dcm_modules(net)]
            net(tiles[1], prompt)
            assert all(dcm._kernel_cache == kept for dcm, kept in zip(dcm_modules(net), first))
            net(tiles[1][:1], None if prompt is None else prompt[:1])  # another batch: computed once more
            assert all(len(dcm._kernel_cache) == 2 for dcm in dcm_modules(net))
