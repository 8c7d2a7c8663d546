"""DCMs in any registered network (pdnsr/archs/prompt_guided_arch.py): RRDBNetPlus, SwinIRPlus, PromptGuided.

Small real networks (basicsr's RRDBNet and SwinIR), real checkpoints written to a temp dir and loaded by basicsr's
own ``load_network``, real threads, torch.compile and a gloo process group.
"""

import copy
import threading

import pytest
import torch
import torch.distributed as dist
from basicsr.archs import build_network
from basicsr.archs.rrdbnet_arch import RRDBNet
from basicsr.archs.swinir_arch import SwinIR
from basicsr.models.base_model import BaseModel
from test_training import log_values, run_cli, tiny_options
from torch import nn

from pdnsr.archs import (
    EDSRPlus,
    RDNPlus,
    RRDBNetPlus,
    SwinIRPlus,
    dcm_modules,
    keep_attention,
    set_dcm_temperature,
    takes_prompt,
    type_takes_prompt,
)
from pdnsr.archs.prompt_guided_arch import _with_dcm

D = 16  # prompt_dim
RRDB = dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=2, num_grow_ch=4, scale=4)
SWIN = dict(
    upscale=2, img_size=16, window_size=4, embed_dim=12, depths=[2, 2], num_heads=[2, 2], mlp_ratio=2.0,
    upsampler='pixelshuffle',
)  # fmt: skip
# (base class, base options, ready placement, dcm_after, LR input shape)
CASES = {
    'RRDBNet': (RRDBNet, RRDB, RRDBNetPlus, ['body.*'], (2, 3, 6, 5)),
    'SwinIR': (SwinIR, SWIN, SwinIRPlus, ['layers.*'], (2, 3, 8, 12)),
}


def plus(name, **kw):
    torch.manual_seed(0)
    _, opts, cls, _, _ = CASES[name]
    return cls(**{**opts, 'prompt_dim': D, **kw})


def generic(name, **kw):
    torch.manual_seed(0)
    base_cls, opts, _, after, _ = CASES[name]
    opt = dict(type='PromptGuided', base=dict(type=base_cls.__name__, **opts), dcm_after=after, prompt_dim=D)
    return build_network({**opt, **kw})


def base_net(name):
    torch.manual_seed(1)
    base_cls, opts, _, _, _ = CASES[name]
    return base_cls(**opts)


def inputs(name, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = CASES[name][4]
    return torch.rand(shape, generator=g), torch.randn(shape[0], D, generator=g)


def zero_dcms(net):
    with torch.no_grad():
        for dcm in dcm_modules(net):
            for name in ('weight', 'kernel', 'mask_kernel', 'bias'):
                if hasattr(dcm, name):
                    getattr(dcm, name).zero_()


# ------------------------------------------------------------------------------------------------ build / names
@pytest.mark.parametrize('name', CASES)
@pytest.mark.parametrize('make', [plus, generic], ids=['placement', 'generic'])
def test_forward_backward_and_dcm_placement(name, make):
    net = make(name, prompt_dim=D)
    x, p = inputs(name)
    scale = CASES[name][1].get('scale', CASES[name][1].get('upscale'))
    y = net(x, p)
    assert y.shape == (2, 3, x.shape[2] * scale, x.shape[3] * scale)
    y.mean().backward()
    assert all(q.grad is not None for q in net.parameters() if q.requires_grad)
    assert len(dcm_modules(net)) == 2 and takes_prompt(net) and net.prompt_dim == D
    assert net.dcm_paths == (('body.0', 'body.1') if name == 'RRDBNet' else ('layers.0', 'layers.1'))
    assert isinstance(net, CASES[name][0])  # the network is the base network, with DCMs
    assert not torch.allclose(net(x, p), net(x, torch.randn(2, D)))  # the prompt matters
    assert torch.isfinite(net(x, None)).all()


def test_placement_and_generic_are_the_same_network():
    for name in CASES:
        a, b = plus(name), generic(name, prompt_dim=D)
        assert list(a.state_dict()) == list(b.state_dict())
        b.load_state_dict(a.state_dict())
        x, p = inputs(name)
        torch.testing.assert_close(a.eval()(x, p), b.eval()(x, p), rtol=0, atol=0)
        # the run-time class survives deepcopy and DataParallel's replica step (both call __new__ without options)
        c = copy.deepcopy(b)
        assert type(c) is type(b) and type(b._replicate_for_data_parallel()) is type(b)
        torch.testing.assert_close(c(x, p), b(x, p), rtol=0, atol=0)
    assert all(type_takes_prompt(t) for t in ('PromptGuided', 'RRDBNetPlus', 'SwinIRPlus'))
    assert type(generic('RRDBNet', prompt_dim=D)) is type(generic('RRDBNet', prompt_dim=D))  # one class per base


@pytest.mark.parametrize('name', CASES)
def test_names_are_the_base_names_plus_dcms(name):
    net, base = plus(name), base_net(name)
    keys, base_keys = list(net.state_dict()), list(base.state_dict())
    assert [k for k in keys if not k.startswith('dcms.')] == base_keys
    assert {k.split('.')[1] for k in keys if k.startswith('dcms.')} == {'0', '1'}
    # named_parameters (what basicsr's EMA and optimiser see) use the same names as the state dict
    assert set(dict(net.named_parameters())) <= set(keys)
    assert not any(k.startswith('base.') for k in keys)


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize('name', CASES)
@pytest.mark.parametrize('param_key', ['params', 'params_ema'])
def test_published_base_checkpoint_loads_with_basicsr_and_zeroed_dcms_reproduce_it(name, param_key, tmp_path):
    base = base_net(name).eval()
    path = tmp_path / 'base.pth'
    # Real-ESRGAN's RealESRGAN_x4plus.pth holds params_ema only; BasicSR's zoo and SwinIR's classical models params.
    torch.save({param_key: base.state_dict()}, path)
    net = plus(name).eval()
    BaseModel(dict(num_gpu=0, is_train=False)).load_network(net, str(path), strict=False, param_key=param_key)
    result = net.load_state_dict(torch.load(path)[param_key], strict=False)
    assert result.unexpected_keys == [] and result.missing_keys
    assert all(k.startswith('dcms.') for k in result.missing_keys)
    x, p = inputs(name)
    with torch.no_grad():
        assert not torch.equal(net(x, p), base(x))
        zero_dcms(net)
        assert torch.equal(net(x, p), base(x))  # exactly: the DCMs add zeros


@pytest.mark.parametrize('name', CASES)
def test_checkpoint_round_trip_and_basicsr_ema(name, tmp_path):
    net = plus(name)
    set_dcm_temperature(net, 7.0)
    torch.save({'params': net.state_dict()}, tmp_path / 'net.pth')
    other = plus(name, dcm=dict(temperature=34.0))
    torch.manual_seed(5)
    for q in other.parameters():
        q.data.normal_()
    BaseModel(dict(num_gpu=0, is_train=False)).load_network(other, str(tmp_path / 'net.pth'), strict=True)
    assert all(d.temperature.item() == 7.0 for d in dcm_modules(other))
    x, p = inputs(name)
    torch.testing.assert_close(other.eval()(x, p), net.eval()(x, p), rtol=0, atol=0)
    # basicsr's model_ema pairs net_g's and net_g_ema's named_parameters by name: they must agree.
    model = BaseModel(dict(num_gpu=0, is_train=False))
    model.net_g, model.net_g_ema = net, other
    for q in net.parameters():
        q.data.fill_(1.0)
    model.model_ema(decay=0.0)
    assert all(torch.equal(q, torch.ones_like(q)) for q in other.parameters())


def test_existing_hand_written_checkpoints_load_into_generic_placements():
    """EDSR+ and RDN+ checkpoints (keys dcms.N...) load strictly into PromptGuided placements, same outputs."""
    for hand, base_type, after, kw in (
        (EDSRPlus, 'EDSR', 'body.*', dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=2, upscale=2)),
        (RDNPlus, 'RDN', 'rdbs.*', dict(num_feat=8, num_block=2, num_layer=2, growth=4, upscale=2)),
    ):
        torch.manual_seed(0)
        ref = hand(**kw, prompt_dim=D).eval()
        net = build_network(dict(type='PromptGuided', base=dict(type=base_type, **kw), dcm_after=after, prompt_dim=D))
        net.load_state_dict(ref.state_dict(), strict=True)
        x, p = torch.rand(2, 3, 5, 6), torch.randn(2, D)
        torch.testing.assert_close(net.eval()(x, p), ref(x, p), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------ layouts, DCM tools
def test_swinir_tokens_reach_the_dcm_as_feature_maps():
    net = plus('SwinIR').eval()
    x, p = inputs('SwinIR')
    keep_attention(net)
    with torch.no_grad():
        net(x, p)
    masks = [d.last_attention for d in dcm_modules(net)]
    assert all(m.shape == (2, 1, 8, 12) for m in masks)  # (B, 1, H, W) of the LR grid, from (B, H*W, C) tokens
    assert set_dcm_temperature(net, 3.0) == 2


def test_swinir_plus_pads_to_the_window_like_the_official_swinir():
    net = plus('SwinIR').eval()
    x, p = torch.rand(1, 3, 10, 13), torch.randn(1, D)
    with torch.no_grad():
        out = net(x, p)
        assert out.shape == (1, 3, 20, 26)
        padded = torch.nn.functional.pad(x, (0, 3, 0, 2), mode='reflect')  # to multiples of window_size 4
        torch.testing.assert_close(out, net(padded, p)[..., :20, :26], rtol=0, atol=0)


def test_rrdbnet_plus_pads_odd_sizes_at_scale_2():
    net = RRDBNetPlus(**{**RRDB, 'scale': 2}, prompt_dim=D).eval()
    x, p = torch.rand(1, 3, 5, 7), torch.randn(1, D)
    with torch.no_grad():
        out = net(x, p)
        assert out.shape == (1, 3, 10, 14)
        padded = torch.nn.functional.pad(x, (0, 1, 0, 1), mode='reflect')
        torch.testing.assert_close(out, net(padded, p)[..., :10, :14], rtol=0, atol=0)


def test_option_builder_uses_each_types_argument_names():
    from pdnsr import options as opts

    rrdb = opts.network('RRDBNetPlus', 4, prompt_dim=D, num_feat=8, num_block=2, num_grow_ch=4)
    assert rrdb['scale'] == 4 and 'upscale' not in rrdb
    swin = opts.network('SwinIRPlus', 2, prompt_dim=D, **{k: v for k, v in SWIN.items() if k != 'upscale'})
    assert swin['in_chans'] == 3 and 'num_in_ch' not in swin
    for opt in (rrdb, swin):
        assert takes_prompt(build_network(opt))


# ------------------------------------------------------------------------------------------------ concurrency
def _meet_around_first_dcm(net, parties):
    """Make ``parties`` concurrent callers wait for each other inside forward, after each has passed its prompt in,
    and again after each has run the first DCM: every caller's first DCM runs while the others' calls are active."""
    barrier = threading.Barrier(parties, timeout=30)

    def wait(*args):
        barrier.wait()

    module = net.get_submodule(net.dcm_paths[0])
    return [module.register_forward_pre_hook(wait), module.register_forward_hook(wait)]  # after the DCM's hook


def _in_two_threads(net, callables):
    """Run ``callables[i]()`` in thread i, both inside ``net``'s forward together; returns (outputs, errors)."""
    handles = _meet_around_first_dcm(net, 2)
    results, errors = {}, []

    def run(i):
        try:
            results[i] = callables[i]()
        except Exception as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for h in handles:
        h.remove()
    return results, errors


def _two_threads_at_once(net, calls):
    """``net(*calls[i])`` in thread i, both inside the network together (no grad); returns (outputs, errors)."""

    def call(i):
        with torch.no_grad():
            return net(*calls[i])

    return _in_two_threads(net, [lambda i=i: call(i) for i in range(2)])


@pytest.mark.parametrize('name', CASES)
def test_two_threads_calling_one_network_keep_their_prompts(name):
    net = plus(name).eval()
    calls = [inputs(name, seed) for seed in (1, 2)]
    with torch.no_grad():
        expected = [net(x, p) for x, p in calls]
    results, errors = _two_threads_at_once(net, calls)
    assert not errors, errors
    for i in range(2):
        torch.testing.assert_close(results[i], expected[i], rtol=0, atol=0)


class _ProcessWideSlot:
    """A stand-in for the context variable that all threads share: what a module attribute would be."""

    value = None

    def get(self):
        return self.value

    def set(self, value):
        old, self.value = self.value, value
        return old

    def reset(self, old):
        self.value = old


def test_control_the_thread_test_catches_a_prompt_shared_between_threads(monkeypatch):
    import pdnsr.archs.prompt_guided_arch as pga

    net = plus('RRDBNet').eval()
    calls = [inputs('RRDBNet', seed) for seed in (1, 2)]
    with torch.no_grad():
        expected = [net(x, p) for x, p in calls]
    monkeypatch.setattr(pga, '_ACTIVE_CALL', _ProcessWideSlot())
    results, errors = _two_threads_at_once(net, calls)
    assert errors or any(not torch.equal(results[i], expected[i]) for i in range(2))


def _replicate_on_cpu(net, offsets):
    """What ``torch.nn.parallel.replicate`` builds, on CPU: every module copied by its own
    ``_replicate_for_data_parallel`` (shallow: the replicas share the original's hook dicts), children re-linked,
    parameters set as non-leaf copies (``replicate`` broadcasts them to other devices, which CPU cannot; here replica
    ``j``'s DCM parameters get ``+ offsets[j]`` so that a hook using the wrong replica's DCM would show)."""
    modules = list(net.modules())
    dcm_params = {id(q) for d in dcm_modules(net) for q in d.parameters()}
    replicas = []
    for offset in offsets:
        copies = {id(m): m._replicate_for_data_parallel() for m in modules}
        for m in modules:
            r = copies[id(m)]
            for key, child in m._modules.items():
                setattr(r, key, copies[id(child)])
            for key, q in m._parameters.items():
                setattr(r, key, q + offset if id(q) in dcm_params else q * 1)
        replicas.append(copies[id(net)])
    return replicas


@pytest.mark.parametrize('name', CASES)
def test_dataparallel_replicas_in_threads_use_their_own_dcms_and_prompts(name):
    """The CPU part of DataParallel: replicas as ``replicate`` makes them, run concurrently in threads as
    ``parallel_apply`` runs them. (The broadcast to several GPUs and ``parallel_apply`` itself need CUDA.)"""
    net = plus(name).eval()
    offsets = (0.0, 0.01)
    replicas = _replicate_on_cpu(net, offsets)
    calls = [inputs(name, seed) for seed in (3, 4)]
    expected = []
    for offset, (x, p) in zip(offsets, calls):
        ref = copy.deepcopy(net)
        with torch.no_grad():
            for d in dcm_modules(ref):
                for q in d.parameters():
                    q.add_(offset)
            expected.append(ref(x, p))
    # The hook dicts are shared: the replicas wait at the original's barrier too.
    results, errors = _in_two_threads(net, [lambda i=i: replicas[i](*calls[i]) for i in range(2)])
    assert not errors, errors
    for i in range(2):
        torch.testing.assert_close(results[i], expected[i], rtol=1e-6, atol=1e-6)
    # gradients flow back from both replicas to the original's parameters, DCMs included
    (results[0].sum() + results[1].sum()).backward()
    assert all(q.grad is not None for q in net.parameters())
    # DataParallel itself on a machine without GPUs calls the module directly
    dp = nn.DataParallel(net)
    assert takes_prompt(dp) and len(dcm_modules(dp)) == 2
    torch.testing.assert_close(dp(*calls[0]), net(*calls[0]))


def test_ddp_single_process_gloo(tmp_path):
    """DistributedDataParallel around the network (gloo, one rank): forward with prompts, gradients of every DCM."""
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1)
    try:
        net = plus('RRDBNet')
        ref = copy.deepcopy(net)
        ddp = nn.parallel.DistributedDataParallel(net)
        x, p = inputs('RRDBNet')
        ddp(x, p).mean().backward()
        ref(x, p).mean().backward()
        for (k, a), b in zip(net.named_parameters(), ref.parameters()):
            torch.testing.assert_close(a.grad, b.grad, msg=k)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------ torch.compile
def test_compile_two_graph_breaks_one_graph_no_recompile_per_prompt():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    net = plus('RRDBNet')
    compiled = torch.compile(net, backend=backend)
    for seed in range(3):
        x, p = inputs('RRDBNet', seed)
        out = compiled(x, p)
        torch.testing.assert_close(out, net(x, p), rtol=1e-6, atol=1e-6)
    out.mean().backward()
    assert len(graphs) == 1  # base forward + every DCM, traced once, reused for new prompts
    breaks = sorted(k.split('Explanation: ')[1].split(' is not')[0] for k in counters['graph_break'])
    assert breaks == ['ContextVar.reset()', 'ContextVar.set()'], breaks
    torch._dynamo.reset()


def test_compile_hand_written_edsr_plus_has_no_graph_break_its_placement_two():
    from torch._dynamo.utils import counters

    kw = dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=2, upscale=2)
    placed = build_network(dict(type='PromptGuided', base=dict(type='EDSR', **kw), dcm_after='body.*', prompt_dim=D))
    x, p = torch.rand(1, 3, 6, 6), torch.randn(1, D)
    for net, breaks in ((EDSRPlus(**kw, prompt_dim=D), 0), (placed, 2)):
        torch._dynamo.reset()
        counters.clear()
        torch.compile(net, backend='eager')(x, p).mean().backward()
        assert sum(counters['graph_break'].values()) == breaks
    torch._dynamo.reset()


@pytest.mark.slow
def test_compile_inductor_matches_eager():
    torch._dynamo.reset()
    net = plus('RRDBNet', num_block=1)
    compiled = torch.compile(net)
    for seed in range(2):
        x, p = inputs('RRDBNet', seed)
        torch.testing.assert_close(compiled(x, p), net(x, p), rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------------ errors
def test_pattern_matching_nothing_lists_module_paths():
    with pytest.raises(ValueError, match=r"dcm_after: 'bodies\.\*' matches no module of .*body\.0 … body\.1"):
        generic('RRDBNet', dcm_after=['bodies.*'])
    with pytest.raises(ValueError, match=r'dcm_after is empty'):
        generic('RRDBNet', dcm_after=[])


def test_star_is_one_path_segment():
    net = generic('RRDBNet', dcm_after=['body.*.rdb?'], prompt_dim=D)
    assert net.dcm_paths == tuple(f'body.{i}.rdb{j}' for i in range(2) for j in (1, 2, 3))
    x, p = inputs('RRDBNet')
    assert net(x, p).shape == (2, 3, 24, 20)


def test_unusable_outputs_are_errors_at_the_first_forward():
    x, p = inputs('RRDBNet')
    with pytest.raises(ValueError, match=r"module 'body.0.rdb1.conv1' outputs .* 4 channels.*set num_feat: 4"):
        generic('RRDBNet', dcm_after=['body.*.rdb1.conv1'])(x, p)
    xs, ps = inputs('SwinIR')
    with pytest.raises(ValueError, match=r"'patch_embed' outputs .*token sequence.*not called with an x_size"):
        generic('SwinIR', dcm_after=['patch_embed'])(xs, ps)
    dcm = dcm_modules(plus('RRDBNet'))[0]
    with pytest.raises(ValueError, match=r"module 'm' outputs a tuple; a DCM needs a feature map"):
        _with_dcm(dcm, (x,), None, (), {}, 'm', 'Net')


def test_channel_count_not_found_asks_for_num_feat():
    spynet = dict(type='SpyNet', load_path=None)
    with pytest.raises(ValueError, match=r'SpyNet takes neither num_feat nor embed_dim; give num_feat: C'):
        build_network(dict(type='PromptGuided', base=spynet, dcm_after=['basic_module.*']))
    net = build_network(dict(type='PromptGuided', base=spynet, dcm_after=['basic_module.*'], num_feat=2, prompt_dim=D))
    assert len(dcm_modules(net)) == 6


def test_option_errors_name_the_option():
    with pytest.raises(ValueError, match=r"network_g.base: unknown option\(s\) \['num_feats'\] for RRDBNet"):
        base = dict(type='RRDBNet', num_in_ch=3, num_out_ch=3, num_feats=8)
        build_network(dict(type='PromptGuided', base=base, dcm_after='body.*'))
    with pytest.raises(ValueError, match=r"SwinIRPlus: unknown option\(s\) \['embed_dims'\] for SwinIR"):
        SwinIRPlus(embed_dims=12)
    with pytest.raises(ValueError, match=r"network_g.base.type 'RRDBNett' is not a registered network"):
        build_network(dict(type='PromptGuided', base=dict(type='RRDBNett'), dcm_after='body.*'))
    with pytest.raises(ValueError, match=r'network_g.base.type EDSRPlus takes a prompt already'):
        build_network(dict(type='PromptGuided', base=dict(type='EDSRPlus'), dcm_after='body.*'))
    with pytest.raises(ValueError, match=r"unknown DCM option\(s\) \['kernal_size'\]"):
        plus('RRDBNet', dcm=dict(kernal_size=3))


def test_dcm_modules_that_do_not_run_or_run_outside_forward_are_errors():
    net = plus('RRDBNet')
    x, p = inputs('RRDBNet')
    with pytest.raises(RuntimeError, match=r"module 'body.0' ran outside the network's forward.*net\(lq, prompt\)"):
        net.body(torch.rand(1, 8, 4, 4))
    net.body = nn.Sequential(net.body[0])  # body.1 (and its hook) left the network: its DCM would never train
    with pytest.raises(ValueError, match=r"dcm_after module\(s\) \['body.1'\] did not run in forward"):
        net(x, p)


# ------------------------------------------------------------------------------------------------ end to end
def _rrdb_options(paired_data, name, pretrain=None, total_iter=12):
    opt = tiny_options(paired_data, name, 'EDSRPlus', total_iter=total_iter)
    opt['network_g'] = dict(
        type='RRDBNetPlus', num_in_ch=3, num_out_ch=3, scale=2, num_feat=8, num_block=2, num_grow_ch=4, prompt_dim=512
    )
    opt['logger']['print_freq'] = 2
    if pretrain:
        opt['path'].update(pretrain_network_g=pretrain, param_key_g='params_ema', strict_load_g=False)
    return opt


@pytest.mark.slow
def test_finetune_rrdbnet_plus_from_a_real_esrgan_layout_checkpoint(paired_data, tmp_path):
    """pdnsr/train.py: RRDBNetPlus starts from an RRDBNet checkpoint holding params_ema only (RealESRGAN_x4plus's
    layout), trains with EMA and the temperature schedule, saves params / params_ema with one naming."""
    torch.manual_seed(0)
    base = RRDBNet(3, 3, scale=2, num_feat=8, num_block=2, num_grow_ch=4)
    torch.save({'params_ema': base.state_dict()}, tmp_path / 'RRDBNet_base.pth')
    opt = _rrdb_options(paired_data, 'rrdb_plus', pretrain=str(tmp_path / 'RRDBNet_base.pth'))
    log = run_cli('train.py', opt, tmp_path)
    assert 'Loading RRDBNetPlus model from' in log and 'with param key: [params_ema]' in log
    missing = log.split('Current net - loaded net:')[1].split('Loaded net - current net:')[0]
    assert 'dcms.0.weight' in missing and 'body.' not in missing and 'conv_first' not in missing
    assert len(log_values(log, 'l_pix')) == 6
    ckpt = torch.load(tmp_path / 'experiments' / 'rrdb_plus' / 'models' / 'net_g_latest.pth', map_location='cpu')
    assert list(ckpt['params']) == list(ckpt['params_ema'])
    for k, v in base.state_dict().items():  # the backbone started from the checkpoint and kept its names
        assert ckpt['params'][k].shape == v.shape
