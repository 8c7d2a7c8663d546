"""What keeps a user's runs, files and machine safe, through the real commands (the one-line refusals of single bad
inputs are rows of tests/test_bad_input.py; these need a run in progress, a run that goes wrong, or a machine
without memory or disk space):

- one run per experiment folder (a lock held while it runs);
- a training whose loss or gradients become NaN stops there, exit 1, its last checkpoint kept (or skips a few steps
  with ``train: skip_nonfinite``);
- ``--force_yml manual_seed=N`` seeds the run;
- out of memory on one image of a folder names it and the next image goes on;
- a full disk while saving says so, and the previous checkpoint stays;
- ``--overwrite`` of the data preparation removes only what it wrote before.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import commands
import cv2
import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from pdnsr import options
from pdnsr.checkpoints import read_checkpoint, state_dict_of

PYTHON = sys.executable
TRAIN = [PYTHON, str(REPO_ROOT / 'pdnsr' / 'train.py'), '-opt']
TINY = dict(num_feat=8, num_block=2)


def train_file(paired_data, path, name='guard', iters=2, seed=0, **train):
    """A tiny EDSR+ training option file on the paired data (``train``: entries of its ``train:`` section)."""
    network = options.network('EDSRPlus', 2, **TINY)
    data = options.train_dataset('tiny', paired_data['hr'], paired_data['lr'], 32, 2, paired_data['text_store'], True)
    opt = options.train_options(name, network, data, 2, iters, 1e-3, seed=seed, print_freq=1, checkpoint_freq=2)
    opt['train'].update(train)
    return str(options.write_options(opt, path))


def train(opt_file, root, *extra, timeout=300):
    env = dict(os.environ, PDNSR_ROOT=str(root), OMP_NUM_THREADS='1')
    return commands.run([*TRAIN, opt_file, *extra], cwd=root, env=env, timeout=timeout)


def last_line(proc):
    return proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_second_run_of_one_name_is_refused_while_the_first_runs(tmp_path, paired_data):
    opt_file = train_file(paired_data, tmp_path / 'train.yml', iters=400)
    lock = tmp_path / 'experiments' / 'guard.lock'
    first = {}
    thread = threading.Thread(target=lambda: first.update(proc=train(opt_file, tmp_path)))
    thread.start()
    for _ in range(600):  # until the first run holds its lock and made its folder
        if lock.exists() and 'process' in lock.read_text() and (tmp_path / 'experiments' / 'guard').is_dir():
            break
        time.sleep(0.1)
    holder = lock.read_text().strip()
    second = train(opt_file, tmp_path)
    thread.join()
    assert second.returncode == 2 and 'Traceback' not in second.stderr, second.stderr[-2000:]
    assert last_line(second).startswith(f'pdnsr-train: error: experiments/guard is in use by {holder}')
    assert first['proc'].returncode == 0, first['proc'].stderr[-2000:]
    assert os.listdir(tmp_path / 'experiments') == ['guard']  # nothing archived, one folder, the lock gone
    assert (tmp_path / 'experiments' / 'guard' / 'models' / 'net_g_latest.pth').is_file()
    resumed = train(opt_file, tmp_path, '--auto_resume')  # the finished run's lock is free again
    assert resumed.returncode == 0, resumed.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize('skips', [0, 2])
def test_a_diverging_training_stops_at_its_first_nonfinite_step(tmp_path, paired_data, skips):
    """The learning rate jumps by 1e30 after iteration 4: the weights overflow and the loss becomes NaN. The run
    stops with one line naming the iteration, exit 1; the checkpoints saved before (every 2 iterations) are finite
    and kept; none is written after. With ``skip_nonfinite: 2`` two such steps are skipped first, with a warning."""
    scheduler = {'type': 'MultiStepLR', 'milestones': [4], 'gamma': 1e30}
    opt_file = train_file(paired_data, tmp_path / 'train.yml', iters=40, scheduler=scheduler, skip_nonfinite=skips)
    proc = train(opt_file, tmp_path)
    line = last_line(proc)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert line.startswith('pdnsr-train: training stopped: the loss or a gradient became NaN or infinite at iteration')
    stopped = int(line.split('at iteration ')[1].split(';')[0])
    models = tmp_path / 'experiments' / 'guard' / 'models'
    saved = sorted(int(name[len('net_g_') : -4]) for name in os.listdir(models))
    assert 4 < stopped < 40 and saved and max(saved) < stopped, (stopped, saved)
    assert f'the last checkpoint, {models / f"net_g_{max(saved)}.pth"}, is kept' in line
    for it in saved:  # finite: they load (a NaN would be refused naming the tensor)
        state_dict_of(read_checkpoint(models / f'net_g_{it}.pth'), 'checkpoint')
    states = os.listdir(tmp_path / 'experiments' / 'guard' / 'training_states')
    assert sorted(int(s.split('.')[0]) for s in states) == saved
    skipped = [f'step skipped ({n} of train.skip_nonfinite: {skips})' for n in range(1, skips + 1)]
    assert all(message in proc.stderr for message in skipped), proc.stderr[-3000:]


@pytest.mark.slow
def test_force_yml_manual_seed_seeds_the_run(tmp_path, paired_data):
    weights = {}
    for run, seed, extra in (('forced', 0, ['--force_yml', 'manual_seed=1']), ('one', 1, []), ('zero', 0, [])):
        opt_file = train_file(paired_data, tmp_path / f'{run}.yml', name=run, iters=1, seed=seed)
        proc = train(opt_file, tmp_path, *extra)
        assert proc.returncode == 0, proc.stderr[-2000:]
        checkpoint = torch.load(tmp_path / 'experiments' / run / 'models' / 'net_g_latest.pth', weights_only=True)
        weights[run] = checkpoint['params']
    for key, value in weights['one'].items():
        torch.testing.assert_close(weights['forced'][key], value, rtol=0, atol=0)
    assert any(not torch.equal(weights['zero'][k], v) for k, v in weights['one'].items())


def test_out_of_memory_names_the_image_and_the_folder_goes_on(tmp_path, paired_data):
    """A 2000x2000 image with 256 MB to spare: one line naming it and the tile size to use; the images after it are
    written; exit 1. The same image alone: exit 2 with that line."""
    opt = options.write_options({'network_g': options.network('EDSRPlus', 2, **TINY)}, tmp_path / 'net.yml')
    from pdnsr.archs.network_options import build_network

    torch.save({'params': build_network(options.network('EDSRPlus', 2, **TINY)).state_dict()}, tmp_path / 'net.pth')
    rng = np.random.default_rng(0)
    inp = tmp_path / 'in'
    inp.mkdir()
    for name, side in (('a', 16), ('big', 2000), ('c', 16)):
        cv2.imwrite(str(inp / f'{name}.png'), rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
    infer = [PYTHON, '-m', 'pdnsr.tools.infer', '--opt', str(opt), '--weights', str(tmp_path / 'net.pth')]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    folder = commands.run([*infer, '--input', str(inp), '--output', str(tmp_path / 'out')], env=env, memory=256 << 20)
    message = (
        f'{inp / "big.png"}: out of memory super-resolving a 2000x2000 image on cpu; use tiles of 256 (--tile 256)'
    )
    assert folder.returncode == 1 and 'Traceback' not in folder.stderr, folder.stderr[-2000:]
    assert [line for line in folder.stderr.splitlines() if 'out of memory' in line][0].startswith(message)
    assert last_line(folder) == f'2 of 3 images written to {tmp_path / "out"}; 1 failed'
    assert sorted(os.listdir(tmp_path / 'out')) == ['a_pdnsr.png', 'c_pdnsr.png']
    one = commands.run([*infer, '--input', str(inp / 'big.png'), '--output', str(tmp_path / 'one')], env=env,
                       memory=256 << 20)  # fmt: skip
    assert one.returncode == 2 and last_line(one).startswith(f'pdnsr-infer: error: {message}'), one.stderr[-2000:]
    assert not (tmp_path / 'one').exists()


@pytest.mark.slow
def test_a_full_disk_while_saving_says_so_and_keeps_the_previous_checkpoint(tmp_path, paired_data):
    """Training into a tmpfs that holds one checkpoint and state but not two (its own mount namespace: ``unshare``)."""
    if shutil.which('unshare') is None:
        pytest.skip('unshare (util-linux) is not installed: no small file system can be mounted for this test')
    opt_file = train_file(paired_data, tmp_path / 'train.yml', iters=4)
    sizing = tmp_path / 'sizing'
    sizing.mkdir()
    assert train(train_file(paired_data, tmp_path / 'one.yml', iters=2), sizing).returncode == 0
    run = sizing / 'experiments' / 'guard'
    one_save = os.path.getsize(run / 'models' / 'net_g_2.pth') + os.path.getsize(run / 'training_states' / '2.state')
    disk = tmp_path / 'disk'
    disk.mkdir()
    size = 256 * 1024 + int(1.5 * one_save)  # the log and one save fit, a second save does not
    script = f'mount -t tmpfs -o size={size} tmpfs {disk} && exec "$@"'
    env = dict(os.environ, PDNSR_ROOT=str(disk), OMP_NUM_THREADS='1')
    argv = ['unshare', '--user', '--map-root-user', '--mount', 'sh', '-c', script, 'sh', *TRAIN, opt_file]
    mounted = subprocess.run(['unshare', '--user', '--map-root-user', '--mount', 'true'], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f'no user namespace here to mount a small file system in: {mounted.stderr.decode().strip()}')
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    line = last_line(proc)
    assert line.startswith('pdnsr-train: error: no space left on the device while writing '), line
    assert '/experiments/guard/' in line and ('net_g_4.pth' in line or '4.state' in line), line


def test_overwrite_removes_only_what_the_preparation_wrote(tmp_path):
    """prepare_benchmark.py twice into one folder, the second time with another sigma, --overwrite and one image
    less: every output is written again, the outputs of the image no longer there are removed (the manifest lists
    them), and a file of the user's in the same folders stays."""
    src = tmp_path / 'src'
    src.mkdir()
    rng = np.random.default_rng(0)
    for name in ('a', 'b'):
        cv2.imwrite(str(src / f'{name}.png'), rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    out = tmp_path / 'out'
    prepare = [PYTHON, str(REPO_ROOT / 'scripts' / 'data_preparation' / 'prepare_benchmark.py'), str(src), str(out)]
    prepare += ['--scale', '2', '--workers', '1']
    assert commands.run(prepare).returncode == 0
    (out / 'HR' / 'mine.png').write_bytes(b'a file of my own')
    first = (out / 'LRx2' / 'a.png').read_bytes()
    (src / 'b.png').unlink()
    proc = commands.run([*prepare, '--sigma', '2.0', '--overwrite'])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(os.listdir(out / 'HR')) == ['a.png', 'mine.png'] and os.listdir(out / 'LRx2') == ['a.png']
    assert (out / 'HR' / 'mine.png').read_bytes() == b'a file of my own'
    assert (out / 'LRx2' / 'a.png').read_bytes() != first  # written again, with the new sigma
    manifest = json.loads((out / 'prepare_info.json').read_text())
    assert manifest['sigma'] == 2.0 and manifest['files'] == ['HR/a.png', 'LRx2/a.png']
