"""The training step's options (amp, channels_last, compile, accumulate), crash-safe states and the checks that
run before basicsr touches a folder: in-process steps on fixed batches, and real runs of pdnsr/train.py."""

import os
import re
import statistics
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import yaml
from test_training import build_model, log_values, run_cli, tiny_options, validation_psnrs

from pdnsr.checkpoints import read_checkpoint
from pdnsr.models.run_checks import preflight


def fixed_batches(count, batch=16, seed=0):
    """Deterministic training batches of the tiny x2 recipe: 16x16 LR, 32x32 GT, a prompt per sample."""
    gen = torch.Generator().manual_seed(seed)
    return [
        dict(
            lq=torch.rand(batch, 3, 16, 16, generator=gen),
            gt=torch.rand(batch, 3, 32, 32, generator=gen),
            prompt=torch.nn.functional.normalize(torch.randn(batch, 512, generator=gen), dim=1),
        )
        for _ in range(count)
    ]


def steps(model, batches, trace=None):
    """Train ``model`` on ``batches`` (one optimiser step each); returns the logged losses. ``trace`` (a list), if
    given, gets after each step the learning rate, the DCM temperature and a copy of net_g's parameters."""
    losses = []
    for it, data in enumerate(batches, 1):
        model.update_learning_rate(it)
        model.feed_data(data)
        model.optimize_parameters(it)
        losses.append(float(model.get_current_log()['l_pix']))
        if trace is not None:
            params = {k: v.detach().clone() for k, v in model.get_bare_model(model.net_g).named_parameters()}
            trace.append((model.get_current_learning_rate()[0], model.current_temperature, params))
    return losses


def tiny_model(data, **train):
    opt = tiny_options(data, 'speed', total_iter=100, **train)
    opt['datasets']['train']['batch_size_per_gpu'] = 16
    torch.manual_seed(0)
    return build_model(opt)


def test_accumulate_four_micro_batches_equals_the_whole_batch(paired_data):
    batches = fixed_batches(4)
    whole, split = tiny_model(paired_data), tiny_model(paired_data, accumulate=4)
    assert split.ema_decay == 0.9
    ema_start = {k: v.detach().clone() for k, v in split.net_g_ema.named_parameters()}
    trace_whole, trace_split = [], []
    losses_whole, losses_split = steps(whole, batches, trace_whole), steps(split, batches, trace_split)
    worst = max(abs(a - b) / b for a, b in zip(losses_split, losses_whole))
    weights = max(
        float((a - b).abs().max()) for a, b in zip(whole.net_g.state_dict().values(), split.net_g.state_dict().values())
    )
    print(f'\naccumulate 4 x batch 4 vs batch 16, 4 optimiser steps (lr 2e-3): largest relative loss difference '
          f'{worst:.1e} (tolerance 1e-5), largest weight difference {weights:.1e} (tol. 1e-5 + 1e-4 rel.)')  # fmt: skip
    assert losses_split == pytest.approx(losses_whole, rel=1e-5)
    for (name, a), b in zip(whole.net_g.state_dict().items(), split.net_g.state_dict().values()):
        # Adam divides by the gradients' own size: float rounding of summed micro-batches shows at ~1e-6, against
        # steps of lr = 2e-3.
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(whole.net_g.state_dict().values(), tiny_model(paired_data).net_g.state_dict().values())
    )
    # The scheduler and the temperature count optimiser steps: the same values after each, and they did change.
    lrs, temperatures = [t[0] for t in trace_whole], [t[1] for t in trace_whole]
    assert [t[0] for t in trace_split] == pytest.approx(lrs, rel=1e-12) and len(set(lrs)) == 4, lrs
    assert [t[1] for t in trace_split] == temperatures and len(set(temperatures)) > 1, temperatures
    # One EMA update per optimiser step (not per micro-batch): ema <- 0.9 ema + 0.1 net_g after each step.
    expected = ema_start
    for _, _, params in trace_split:
        expected = {k: 0.9 * v + 0.1 * params[k] for k, v in expected.items()}
    for name, value in split.net_g_ema.named_parameters():
        torch.testing.assert_close(value.detach(), expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_channels_last_step_equals_the_default_one(paired_data):
    batches = fixed_batches(2)
    default, last = tiny_model(paired_data), tiny_model(paired_data, channels_last=True)
    assert last.net_g.conv_first.weight.is_contiguous(memory_format=torch.channels_last)
    assert steps(last, batches) == pytest.approx(steps(default, batches), rel=1e-5)


@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_amp_step_is_finite_and_close_to_float32(paired_data, amp):
    batches = fixed_batches(3)
    reference, mixed = tiny_model(paired_data), tiny_model(paired_data, amp=amp)
    assert (mixed.scaler is not None) == (amp == 'fp16')
    losses = steps(mixed, batches)
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses == pytest.approx(steps(reference, batches), rel=0.05)


BAD_TRAIN_OPTIONS = [
    (dict(amp='fp8'), "train.amp: 'fp8' is not one of bf16, fp16, false"),
    (dict(amp=True), 'train.amp: True is not one of bf16, fp16, false'),
    (dict(channels_last='yes'), "train.channels_last must be true or false, got 'yes'"),
    (dict(compile=dict(mode='fast', turbo=True)), r"train.compile: unknown option\(s\) \['turbo'\]"),
    (dict(compile=dict(mode='fast')), "train.compile.mode: 'fast' is not one of default, .*max-autotune"),
    (dict(compile=dict(backend='nope')), "train.compile.backend: 'nope' is not a torch.compile backend; .*inductor"),
    (dict(compile=dict(dynamic='yes')), "train.compile.dynamic must be true, false or null, got 'yes'"),
    (dict(compile=dict(fullgraph=1)), 'train.compile.fullgraph must be true or false, got 1'),
    (dict(accumulate=0), 'train.accumulate must be a positive integer, got 0'),
    (dict(accumulate=4), 'train.accumulate: 4 does not divide batch_size_per_gpu 2'),
]


@pytest.mark.parametrize('train, message', BAD_TRAIN_OPTIONS)
def test_bad_train_option_is_refused_before_anything_is_built(paired_data, tmp_path, train, message):
    opt = tiny_options(paired_data, 'bad', **train)
    path = tmp_path / 'bad.yml'
    path.write_text(yaml.safe_dump(opt))
    with pytest.raises(ValueError, match=message):
        preflight('train', ['-opt', str(path)])


def test_string_booleans_and_unknown_keys(paired_data, tmp_path, capsys):
    opt = tiny_options(paired_data, 'typo', amp_dtype='bf16')
    opt['network_g']['dcm'] = dict(use_attention='false')
    path = tmp_path / 'typo.yml'
    path.write_text(yaml.safe_dump(opt))
    with pytest.raises(ValueError, match=r"use_attention must be true or false, got 'false' \(a str\)"):
        preflight('train', ['-opt', str(path)])
    del opt['network_g']['dcm']
    path.write_text(yaml.safe_dump(opt))
    preflight('train', ['-opt', str(path)])
    assert "train: unknown option(s) ['amp_dtype'] are ignored" in capsys.readouterr().err


@pytest.mark.slow
def test_an_option_typo_never_archives_the_existing_experiment(paired_data, tmp_path):
    opt = tiny_options(paired_data, 'kept', total_iter=2)
    run_cli('train.py', opt, tmp_path)
    opt['network_g']['dcm'] = dict(num_kernel=4)
    log = run_cli('train.py', opt, tmp_path, expect=2)
    assert "unknown DCM option(s) ['num_kernel']" in log.strip().splitlines()[-1]
    assert os.listdir(tmp_path / 'experiments') == ['kept'], 'basicsr renamed the experiment before the check'


@pytest.mark.slow
def test_bf16_run_ends_like_float32(paired_data, tmp_path):
    """200 iterations of the tiny EDSR+ recipe: loss over the last 50 within 5 %, validation PSNR within 0.1 dB."""

    def train(amp):
        opt = tiny_options(paired_data, f'amp_{amp}', total_iter=200, amp=amp)
        opt['logger']['print_freq'] = 10
        opt['logger']['save_checkpoint_freq'] = 200
        log = run_cli('train.py', opt, tmp_path, timeout=600)
        return statistics.mean(log_values(log, 'l_pix')[-5:]), validation_psnrs(log)[-1]

    with ThreadPoolExecutor(2) as pool:  # one thread each, side by side
        results = dict(zip((False, 'bf16'), pool.map(train, (False, 'bf16'))))
    (loss32, psnr32), (loss16, psnr16) = results[False], results['bf16']
    print(f'\nbf16 vs float32, 200 iterations of the tiny EDSR+ recipe: mean loss of the last 5 logged iterations '
          f'{loss16:.5f} vs {loss32:.5f} ({(loss16 - loss32) / loss32:+.2%}; target within 5 %), validation PSNR '
          f'{psnr16:.3f} vs {psnr32:.3f} dB ({psnr16 - psnr32:+.3f} dB; target within 0.1 dB)')  # fmt: skip
    assert abs(loss16 - loss32) <= 0.05 * loss32, results
    assert abs(psnr16 - psnr32) <= 0.1, results


@pytest.mark.slow
def test_fp16_run_killed_and_resumed_keeps_its_grad_scaler(paired_data, tmp_path):
    opt = tiny_options(paired_data, 'fp16', total_iter=30, amp='fp16')
    opt['logger'].update(save_checkpoint_freq=10, print_freq=5)
    saved = []

    def crash(line):  # kill -9 at the first log line after the second checkpoint was written
        saved.extend(['save'] if 'Saving models' in line else [])
        return len(saved) == 2 and 'iter:' in line

    run_cli('train.py', opt, tmp_path, expect=-9, kill_when=crash)
    states = sorted(os.listdir(tmp_path / 'experiments' / 'fp16' / 'training_states'))
    assert states == ['10.state', '20.state'], states
    state_path = tmp_path / 'experiments' / 'fp16' / 'training_states' / '20.state'
    state = read_checkpoint(state_path, 'state')
    assert state['scaler']['scale'] == 65536.0  # GradScaler's start: in 20 iterations of a tiny net it did not move
    # A scale no fresh GradScaler has (and no growth for a while): only a restored scaler can log it.
    state['scaler'].update(scale=1024.0, _growth_tracker=0)
    torch.save(state, state_path)
    log = run_cli('train.py', opt, tmp_path, '--auto_resume')
    assert 'Resuming training from epoch' in log and 'iter: 20.' in log
    assert 'Resumed the fp16 GradScaler at scale 1024' in log
    losses, scales = log_values(log, 'l_pix'), log_values(log, 'grad_scale')
    print(f'\nfp16 killed (SIGKILL) after the state at iteration 20 was saved, its scale set to 1024, resumed with '
          f'--auto_resume: losses after resuming {losses}, grad scale {scales}')  # fmt: skip
    assert scales and all(s <= 1024.0 for s in scales)  # growth doubles only after 2000 clean steps
    assert losses and all(map(torch.isfinite, map(torch.tensor, losses)))


@pytest.mark.slow
def test_auto_resume_skips_a_truncated_or_unsafe_newest_state(paired_data, tmp_path):
    opt = tiny_options(paired_data, 'crash', total_iter=30)
    opt['logger']['save_checkpoint_freq'] = 10
    run_cli('train.py', opt, tmp_path)
    exp = tmp_path / 'experiments' / 'crash'
    for path in (exp / 'training_states' / '30.state', exp / 'models' / 'net_g_30.pth'):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a crash while basicsr wrote them
    evil = torch.load(exp / 'training_states' / '20.state', weights_only=False)
    evil['iter'] = 40
    evil['hook'] = os.system  # unpickling would import and keep a callable
    torch.save(evil, exp / 'training_states' / '40.state')
    log = run_cli('train.py', opt, tmp_path, '--auto_resume')  # the same 30 iterations, from the state at 20
    assert re.search(
        r'--auto_resume: skipping iteration 40: cannot read training state .*40\.state: it holds Python objects', log
    )
    assert re.search(
        r'--auto_resume: skipping iteration 30: cannot read training state .*30\.state: it is not a complete', log
    )
    assert 'Resuming training from epoch' in log and 'iter: 20.' in log
    opt['path']['resume_state'] = str(exp / 'training_states' / '40.state')
    log = run_cli('train.py', opt, tmp_path, expect=2)
    assert 'training state' in log.strip().splitlines()[-1] and 'Traceback' not in log


def plain_names(path):
    """The parameter names of a saved network (params and params_ema) that torch.compile's wrapper would prefix."""
    checkpoint = read_checkpoint(path)
    assert checkpoint['params'] and checkpoint['params_ema'], sorted(checkpoint)
    return [k for key in ('params', 'params_ema') for k in checkpoint[key] if '_orig_mod' in k] == []


@pytest.mark.slow
def test_compiled_training_resumes_an_eager_state_and_saves_plain_names(paired_data, tmp_path):
    """Eager iterations 1-3, resumed compiled for 4-6: the compiled network loads the plain names of the state and
    saves plain names (so an eager run, or any other tool, reads its checkpoints)."""
    opt = tiny_options(paired_data, 'compiled', total_iter=3)
    opt['logger'].update(save_checkpoint_freq=3, print_freq=3)
    opt['train']['scheduler']['periods'] = [6]  # the schedule of the whole 6 iterations (resumed from the state)
    assert 'Training step: float32, eager' in run_cli('train.py', opt, tmp_path)
    exp = tmp_path / 'experiments' / 'compiled'
    opt['train'].update(compile=True, total_iter=6)
    log = run_cli('train.py', opt, tmp_path, '--auto_resume', timeout=900)
    assert 'Resuming training from epoch' in log and 'iter: 3.' in log and 'Training step: float32, compiled {}' in log
    assert log_values(log, 'l_pix') and plain_names(exp / 'models' / 'net_g_6.pth')
