"""Training and testing through basicsr's pipelines (pdnsr/train.py, pdnsr/test.py) on CPU, end to end.

Real images (scikit-image photos written to a temp dir), real prompt LMDBs built by the real builder from the
open_clip ViT-B-32 architecture with random weights (no hub here), real subprocesses of the CLI entry points.
"""

import glob
import os
import re
from functools import partial

import commands
import pytest
import torch

from pdnsr import options as opts
from pdnsr.archs.dcm_arch import dcm_modules, type_takes_prompt
from pdnsr.models.pdn_model import build_in_process as build_model
from pdnsr.tools.experiments.runs import launch, progress_of, validation_results

TINY_NETS = {
    'EDSRPlus': dict(num_feat=16, num_block=2),
    'RCANPlus': dict(num_feat=16, num_group=2, num_block=2, squeeze_factor=4, num_dcm_per_group=2),
    'EDSR': dict(num_feat=16, num_block=2),
}


def tiny_options(data, name, net_type='EDSRPlus', total_iter=30, every_epochs=1, **train_extra):
    """A training option dict (:mod:`pdnsr.options`) of a tiny network on ``paired_data``, validated at the end."""
    plus = type_takes_prompt(net_type)
    prompts = data['image_store'] if plus else None
    opt = opts.train_options(
        name,
        opts.network(net_type, 2, **TINY_NETS[net_type]),
        opts.train_dataset('tiny', data['hr'], data['lr'], 32, 2, prompts, plus),
        scale=2,
        iters=total_iter,
        lr=2e-3,
        val_sets=dict(val=opts.dataset('tinyval', data['hr'], data['lr'], prompts, plus)),
        ema_decay=0.9,
        eta_min=1e-5,
        temperature=dict(init=34, step=3, every_epochs=every_epochs, min=1),
        print_freq=5,
        checkpoint_freq=10,
        use_tb_logger=True,
    )
    opt['train'].update(train_extra)
    opt['val']['save_img'] = True
    return opt


def run_cli(script, opt, root, *args, timeout=240, expect=0, **kwargs):
    """``pdnsr/<script>`` on ``opt`` in a process of its own (a fork of :mod:`commands`' server; with ``kwargs``,
    e.g. ``kill_when``, a subprocess of :func:`pdnsr.tools.experiments.runs.launch`); returns its log after checking
    the exit status."""
    run = partial(launch, **kwargs) if kwargs else commands.launch
    result = run(opt, str(root), script.replace('.py', ''), args, threads=1, timeout=timeout)
    log = open(result.log_path, encoding='utf-8').read()
    assert result.returncode == expect, log[-4000:]
    return log


def log_values(log, key):
    """Values of ``key`` in basicsr's training progress lines, in order (e.g. iter, l_pix, temperature), as
    :func:`pdnsr.tools.experiments.runs.progress_of` reads them (the demo's progress and the GPU check's timings)."""
    return [p[key] for p in map(progress_of, log.splitlines()) if p is not None and key in p]


def validation_psnrs(log):
    """The PSNRs of basicsr's validation log lines, in order (:func:`~pdnsr.tools.experiments.runs.validation_results`,
    as the GPU check and bench_quality.py read them)."""
    return [value for _, value in validation_results(log)]


@pytest.mark.slow
@pytest.mark.parametrize('net_type', ['EDSRPlus', 'RCANPlus'])
def test_train_end_to_end(paired_data, tmp_path, net_type):
    opt = tiny_options(paired_data, f'e2e_{net_type}', net_type, total_iter=40)
    log = run_cli('train.py', opt, tmp_path)
    losses = log_values(log, 'l_pix')
    assert log_values(log, 'iter') == list(range(5, 41, 5)) and len(losses) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, f'loss did not go down: {losses}'
    psnrs = validation_results(log)  # basicsr's own log lines, as the GPU check and bench_quality.py read them
    assert psnrs and {s for s, _ in psnrs} == {'tinyval'} and all(10 < v < 60 for _, v in psnrs), psnrs
    exp = tmp_path / 'experiments' / opt['name']
    assert {'net_g_10.pth', 'net_g_40.pth', 'net_g_latest.pth'} <= set(os.listdir(exp / 'models'))
    assert {'10.state', '40.state'} <= set(os.listdir(exp / 'training_states'))
    assert glob.glob(str(tmp_path / 'tb_logger' / opt['name'] / 'events.out.tfevents.*'))
    ckpt = torch.load(exp / 'models' / 'net_g_40.pth', map_location='cpu', weights_only=True)
    assert set(ckpt) == {'params', 'params_ema', 'pdnsr'}
    # The record of its prompts (pdnsr.provenance): the image store of paired_data, made by the seed-0 random CLIP.
    assert ckpt['pdnsr'] == {
        'format': 1,
        'prompt_encoder': {'model_name': 'ViT-B-32', 'weights': 'random-seed-0', 'kind': 'image', 'view': 'flip'},
        'prompt_dim': 512,
        'dcm': {'bank': 'paper', 'router': 'scaled'},
        'network_g': opt['network_g'],
    }
    # 6 images / batch 2 = 3 iterations per epoch; T drops by 3 every epoch: epoch 13 (iter 40) -> 34 - 39 < 1.
    temps = [k for k in ckpt['params_ema'] if k.endswith('temperature')]
    assert temps and all(ckpt['params_ema'][k].item() == 1.0 and ckpt['params'][k].item() == 1.0 for k in temps)
    assert log_values(log, 'temperature')[:2] == [31.0, 25.0]  # iteration 5 is in epoch 1, iteration 10 in epoch 3


@pytest.mark.slow
def test_baseline_trains_under_the_same_model(paired_data, tmp_path):
    opt = tiny_options(paired_data, 'e2e_edsr', 'EDSR', total_iter=10)
    log = run_cli('train.py', opt, tmp_path)
    assert log_values(log, 'l_pix') and 'temperature' not in log.split('Start training')[-1]


@pytest.mark.slow
def test_auto_resume_continues_schedule_and_optimizer(paired_data, tmp_path):
    full = tiny_options(paired_data, 'full', total_iter=30)
    full_log = run_cli('train.py', full, tmp_path)
    # The same recipe, stopped after 15 of its 30 iterations (the cosine period stays 30, as in the full run).
    part = tiny_options(paired_data, 'resumed', total_iter=15)
    part['train']['scheduler']['periods'] = [30]
    part['logger']['save_checkpoint_freq'] = 15
    run_cli('train.py', part, tmp_path)
    resumed = tiny_options(paired_data, 'resumed', total_iter=30)
    resumed['logger']['save_checkpoint_freq'] = 15
    log = run_cli('train.py', resumed, tmp_path, '--auto_resume')
    assert 'Resuming training from epoch: 4, iter: 15' in log
    assert log_values(log, 'temperature') == log_values(full_log, 'temperature')[3:]
    lrs = [re.findall(r'lr:\(([-+0-9.e]+),\)', text) for text in (log, full_log)]
    assert lrs[0] and lrs[0] == lrs[1][3:]  # the cosine schedule continues too
    state = torch.load(
        tmp_path / 'experiments' / 'resumed' / 'training_states' / '30.state', map_location='cpu', weights_only=False
    )
    steps = {int(s['step']) for s in state['optimizers'][0]['state'].values()}
    assert steps == {30}, f'Adam state did not continue from iteration 15: {steps}'


@pytest.mark.slow
def test_test_script_writes_images_metrics_and_attention(paired_data, tmp_path):
    train = tiny_options(paired_data, 'for_test', total_iter=10)
    run_cli('train.py', train, tmp_path)
    weights = str(tmp_path / 'experiments' / 'for_test' / 'models' / 'net_g_latest.pth')
    test_set = dict(train['datasets']['val'], name='tinytest', dataroot_prompt=paired_data['text_store'])
    opt = opts.test_options('tiny_test', train['network_g'], dict(test_1=test_set), 2, weights, param_key='params_ema')
    opt['val']['save_attention'] = [0, -1]
    run_cli('test.py', opt, tmp_path)
    results = tmp_path / 'results' / 'tiny_test'
    table = (results / 'metrics.md').read_text()
    assert re.search(r'\| tinytest \| \d+\.\d{4} \|', table), table
    pictures = os.listdir(results / 'visualization' / 'tinytest')
    for key in paired_data['keys']:
        assert f'{key}_tiny_test.png' in pictures
        assert {f'{key}_tiny_test_attention_dcm0.png', f'{key}_tiny_test_attention_dcm1.png'} <= set(pictures)


def test_temperature_schedule_paper_values_on_both_networks(paired_data):
    opt = tiny_options(paired_data, 'sched', total_iter=1000, every_epochs=10)
    model = build_model(opt)
    per_epoch = 3  # 6 images, batch 2, one process, enlarge ratio 1
    for epoch, expected in ((0, 34), (9, 34), (10, 31), (95, 7)):
        for it in (epoch * per_epoch + 1, (epoch + 1) * per_epoch):  # first and last iteration of the epoch
            model.update_learning_rate(it)
            temps = {d.temperature.item() for net in (model.net_g, model.net_g_ema) for d in dcm_modules(net)}
            assert temps == {expected}, (epoch, it, temps)


def test_enlarge_ratio_and_batch_count_like_basicsr(paired_data):
    opt = tiny_options(paired_data, 'sched2', total_iter=1000, every_epochs=1)
    opt['datasets']['train'].update(dataset_enlarge_ratio=3, batch_size_per_gpu=4)
    model = build_model(opt)
    model.update_learning_rate(5)  # ceil(6 * 3 / 4) = 5 iterations per epoch: still epoch 0
    assert model.current_temperature == 34
    model.update_learning_rate(6)
    assert model.current_temperature == 31


def _without_val_prompts(opt):
    del opt['datasets']['val']['dataroot_prompt']
    opt['datasets']['val']['type'] = 'PairedImageDataset'


BAD_OPTIONS = [  # (change of a good option dict, exception, message)
    (_without_val_prompts, ValueError, r'datasets.val: network_g type EDSRPlus takes prompts'),
    (lambda opt: opt['network_g'].update(prompt_dim=256), ValueError, r'size 512 but network_g.prompt_dim is 256'),
    (
        lambda opt: opt['network_g'].update(dcm=dict(num_kernel=4)),
        ValueError,
        r"unknown DCM option\(s\) \['num_kernel'\]",
    ),
    (
        lambda opt: opt['network_g'].update(prompt_dims=512),
        ValueError,
        r"network_g: unknown option\(s\) \['prompt_dims'\]",
    ),
    (
        lambda opt: opt['train'].update(temperature=dict(start=34)),
        ValueError,
        r"train.temperature: unknown option\(s\) \['start'\]",
    ),
    (lambda opt: opt['datasets']['val'].update(dataroot_prompt='nowhere.lmdb'), FileNotFoundError, 'nowhere.lmdb'),
]
if not torch.cuda.is_available():
    BAD_OPTIONS.append(
        (lambda opt: opt.update(num_gpu=1), ValueError, r'num_gpu: 1 but this machine has no CUDA device')
    )


@pytest.mark.parametrize('change, error, message', BAD_OPTIONS)
def test_clear_errors_before_training(paired_data, change, error, message):
    opt = tiny_options(paired_data, 'bad')
    change(opt)
    with pytest.raises(error, match=message):
        build_model(opt)


@pytest.mark.slow
def test_cli_user_error_is_one_line_with_exit_status_2(paired_data, tmp_path):
    opt = tiny_options(paired_data, 'missing_store')
    opt['datasets']['train']['dataroot_prompt'] = str(tmp_path / 'nowhere.lmdb')
    log = run_cli('train.py', opt, tmp_path, expect=2)
    last = log.strip().splitlines()[-1]
    assert last.startswith('pdnsr-train: error: datasets.train.dataroot_prompt: ') and 'nowhere.lmdb' in last, last
    assert 'Traceback' not in log and not (tmp_path / 'experiments').exists()
