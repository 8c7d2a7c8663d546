"""The Dynamic Correlation Module against the paper's equations, written out here independently."""

import pytest
import torch
import torch.nn.functional as F

from pdnsr.archs.dcm_arch import DynamicCorrelationModule, keep_attention, set_dcm_temperature


def equations_2_to_4(dcm, x, p):
    """Eq. 2-4 of the paper, one sample at a time, in float64, from the module's parameters only."""
    outs = []
    for b in range(x.shape[0]):
        xb, pb = x[b : b + 1].double(), p[b].double()
        f = F.conv2d(xb, dcm.proj.weight.double(), dcm.proj.bias.double())  # (1, d, h, w)
        if dcm.use_attention:
            f_norm = f / f.norm(dim=1, keepdim=True)
            cos = (f_norm * (pb / pb.norm())[None, :, None, None]).sum(1, keepdim=True)
            f = torch.sigmoid(dcm.zeta.double() * cos) * f
        if dcm.use_dynamic:
            # The paper's router reads the prompt; the scaled one its unit vector times sqrt(d).
            seen = pb if dcm.router_kind == 'paper' else pb / pb.norm() * pb.numel() ** 0.5
            pi = torch.softmax(dcm.router(seen[None].to(dcm.weight.dtype)).double()[0] / dcm.temperature.double(), 0)
        else:
            pi = torch.ones(1, dtype=torch.float64)
        weight = (pi[:, None, None, None, None] * dcm.weight.double()).sum(0)
        bias = (pi[:, None] * dcm.bias.double()).sum(0)
        outs.append(F.conv2d(f, weight, bias, padding=dcm.kernel_size // 2))
    return torch.cat(outs)


def make(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    dcm = DynamicCorrelationModule(6, 10, **kw).to(dtype)
    with torch.no_grad():  # larger biases and kernels than the init, so every term of the fold matters
        dcm.proj.bias.normal_()
        dcm.bias.normal_()
        dcm.weight.normal_()
    return dcm


def inputs(dtype=torch.float64, batch=3):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 6, 7, 9, generator=gen, dtype=dtype)
    p = torch.randn(batch, 10, generator=gen, dtype=dtype)  # a different prompt per sample
    return x, p


ABLATIONS = [
    dict(),
    dict(router='paper'),
    dict(use_attention=False),
    dict(use_attention=False, router='paper'),
    dict(use_dynamic=False),
    dict(use_attention=False, use_dynamic=False),
    dict(kernel_size=1),
    dict(kernel_size=5, num_kernels=2),
]


@pytest.mark.parametrize('kw', ABLATIONS)
def test_matches_equations(kw):
    dcm = make(**kw)
    dcm.set_temperature(2.0)
    x, p = inputs()
    expected = equations_2_to_4(dcm, x, p)
    torch.testing.assert_close(dcm(x, p), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dcm.forward_literal(x, p), expected, rtol=1e-10, atol=1e-10)


def _outputs_and_grads(dcm, fn, x, p):
    dcm.zero_grad()
    x = x.clone().requires_grad_()
    out = fn(x, p)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    grads = {n: q.grad.clone() for n, q in dcm.named_parameters()}
    return out.detach(), x.grad, grads


@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize('kw', ABLATIONS[:4])
def test_folded_path_equals_literal_with_gradients(dtype, tol, kw):
    dcm = make(dtype, **kw)
    x, p = inputs(dtype)
    fast = _outputs_and_grads(dcm, dcm.forward, x, p)
    ref = _outputs_and_grads(dcm, dcm.forward_literal, x, p)
    for a, b in zip(fast[:2], ref[:2]):
        assert ((a - b).norm() / b.norm()).item() <= tol
    assert fast[2].keys() == ref[2].keys()
    for name in ref[2]:
        rel = ((fast[2][name] - ref[2][name]).norm() / ref[2][name].norm().clamp_min(1e-30)).item()
        assert rel <= tol, f'gradient of {name}: relative error {rel}'


def test_zeta_starts_at_50_and_learns():
    dcm = DynamicCorrelationModule(4, 8)
    assert dcm.zeta.item() == 50.0
    x, p = torch.randn(2, 4, 5, 5), torch.randn(2, 8)
    dcm(x, p).square().sum().backward()
    assert dcm.zeta.grad is not None and dcm.zeta.grad.abs().item() > 0


def test_temperature_controls_kernel_mixture():
    dcm = DynamicCorrelationModule(4, 8, num_kernels=4)
    with torch.no_grad():
        dcm.router[2].weight.mul_(50)
    p = torch.randn(3, 8)
    dcm.set_temperature(1e6)
    torch.testing.assert_close(dcm.kernel_weights(p), torch.full((3, 4), 0.25), atol=1e-4, rtol=0)
    dcm.set_temperature(1e-4)
    assert torch.all(dcm.kernel_weights(p).max(1).values > 0.999)
    with pytest.raises(ValueError, match='temperature'):
        dcm.set_temperature(0)


def test_temperature_is_saved_with_the_state():
    dcm = DynamicCorrelationModule(4, 8)
    assert dcm.temperature.item() == 34.0
    dcm.set_temperature(7.0)
    other = DynamicCorrelationModule(4, 8)
    other.load_state_dict(dcm.state_dict())
    assert other.temperature.item() == 7.0
    assert 'temperature' not in dict(dcm.named_parameters())
    assert set_dcm_temperature(torch.nn.Sequential(dcm, other), 3.0) == 2 and other.temperature.item() == 3.0


def test_ablation_flags_change_parameter_set():
    def names(**kw):
        return {n for n, _ in DynamicCorrelationModule(4, 8, **kw).named_parameters()}

    full = names()
    assert {'proj.weight', 'proj.bias', 'zeta', 'weight', 'bias'} <= full and any(n.startswith('router.') for n in full)
    assert names(use_attention=False) == full - {'zeta'}
    assert names(use_dynamic=False) == {n for n in full if not n.startswith('router.')}
    static = DynamicCorrelationModule(4, 8, use_dynamic=False)
    assert static.weight.shape == (1, 4, 8, 3, 3)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    static(x, torch.randn(2, 8)).sum().backward()
    assert x.grad is not None


def test_parameter_shapes_follow_the_contract():
    dcm = DynamicCorrelationModule(16, 32, num_kernels=4, kernel_size=3, router_hidden=20)
    assert dcm.proj.weight.shape == (32, 16, 1, 1) and dcm.proj.bias.shape == (32,)
    assert dcm.weight.shape == (4, 16, 32, 3, 3) and dcm.bias.shape == (4, 16)
    assert [m.__class__.__name__ for m in dcm.router] == ['Linear', 'ReLU', 'Linear']
    assert dcm.router[0].weight.shape == (20, 32) and dcm.router[2].weight.shape == (4, 20)


def test_zero_and_missing_prompt_are_finite():
    dcm = make(torch.float32)
    x = torch.randn(2, 6, 5, 5)
    zero = dcm(x, torch.zeros(2, 10))
    assert torch.isfinite(zero).all()
    torch.testing.assert_close(dcm(x, None), zero)
    keep_attention(dcm)
    dcm(x, torch.zeros(2, 10))
    torch.testing.assert_close(dcm.last_attention, torch.full((2, 1, 5, 5), 0.5))
    # A zero feature vector (all-zero input and projection bias) must not give NaN either.
    with torch.no_grad():
        dcm.proj.bias.zero_()
    assert torch.isfinite(dcm(torch.zeros(1, 6, 4, 4), torch.randn(1, 10))).all()


def test_attention_mask_kept_only_on_request():
    dcm = DynamicCorrelationModule(4, 8)
    x, p = torch.randn(2, 4, 5, 6), torch.randn(2, 8)
    dcm(x, p)
    assert dcm.last_attention is None
    keep_attention(dcm)
    dcm(x, p)
    assert dcm.last_attention.shape == (2, 1, 5, 6) and not dcm.last_attention.requires_grad
    keep_attention(dcm, False)
    assert dcm.last_attention is None


def test_bad_prompts_name_both_numbers():
    dcm = DynamicCorrelationModule(4, 8)
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises(ValueError, match=r'size 7.*prompt_dim=8'):
        dcm(x, torch.randn(2, 7))
    with pytest.raises(ValueError, match=r'prompt batch size 3 differs from image batch size 2'):
        dcm(x, torch.randn(3, 8))
    with pytest.raises(ValueError, match='kernel_size'):
        DynamicCorrelationModule(4, 8, kernel_size=2)


def test_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    dcm = DynamicCorrelationModule(16, 32)
    x, p = torch.randn(2, 16, 12, 12), torch.randn(2, 32)
    ref = dcm(x, p)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = dcm(x, p)
    assert torch.isfinite(out).all()
    assert ((out.float() - ref).norm() / ref.norm()).item() < 2e-2
