"""The demo (scripts/demo.py) end to end in --quick mode, plus its user errors and log summarising."""

import os
import re
import sys

import commands
import cv2
import yaml

from conftest import REPO_ROOT
from pdnsr.tools import demo
from pdnsr.utils.visualization import colour_bar, grid_size


def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('not ours')  # an existing output folder is fine, and its other files stay
    env = dict(os.environ, OMP_NUM_THREADS='2')
    proc = commands.run(
        [sys.executable, os.path.join(REPO_ROOT, 'scripts', 'demo.py'), '--quick', '--output', str(out)], tmp_path, env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout

    # What the captions carry comes first, and again under the table.
    assert log.startswith('WHAT THE CAPTIONS CARRY')
    assert ' '.join(log.split()).count("work through this same path: the paper's setting") == 2
    for step in range(1, 6):
        assert f'[{step}/5]' in log
    assert re.search(r'EDSR\+ +iter +20/20 +l_pix \d', log), 'training progress was not summarised'

    # One row per method, PSNR and SSIM for each blur.
    number = r' \| (\d+\.\d{2}) \| (\d\.\d{4})'
    rows = {}
    for key, title in demo.METHODS.items():
        match = re.search(f'^\\| {re.escape(title)}{number * len(demo.DEGRADATIONS)} \\|$', log, re.MULTILINE)
        assert match, f'no table row for {title}:\n{log[-2500:]}'
        rows[key] = tuple(float(v) for v in match.groups())
    assert all(20 < psnr < 60 for psnr in rows['bicubic'][::2]) and all(0 < q <= 1 for q in rows['bicubic'][1::2])
    # The blurrier input is harder for bicubic.
    assert rows['bicubic'][0] > rows['bicubic'][2]
    head = '| method | sharp (σ 0.4) PSNR | SSIM | blurry (σ 2) PSNR | SSIM |\n|---|---:|---:|---:|---:|\n'
    assert (out / 'results.md').read_text().startswith(head)  # numbers right-aligned
    assert (out / 'keep.txt').exists()

    hr = cv2.imread(str(out / 'data' / 'test' / demo.HOLDOUT / 'sharp' / 'HR' / f'{demo.HOLDOUT}.png'))
    assert hr is not None
    side = demo.CROP * demo.ZOOM
    comparison = cv2.imread(str(out / 'comparison.png'))
    n_deg = len(demo.DEGRADATIONS)
    assert comparison is not None
    assert comparison.shape == (*grid_size(side, side, cols=len(demo.METHODS) + 1, rows=n_deg), 3)
    attention = cv2.imread(str(out / 'attention.png'))
    assert attention is not None
    grid_h, grid_w = grid_size(hr.shape[0], hr.shape[1], cols=4, rows=n_deg)
    bar = colour_bar(grid_h)
    assert attention.shape == (grid_h, grid_w + bar.shape[1], 3)
    assert (attention[:, grid_w:] == bar).all()  # the masks' scale, 0 to 1
    last = demo.RECIPES['quick'].num_block - 1  # one DCM per residual block
    for deg in demo.DEGRADATIONS:
        for name in (f'attention_{deg.name}_dcm{i}_{which}.png' for i in (0, last) for which in ('right', 'wrong')):
            picture = cv2.imread(str(out / name))
            assert picture is not None and picture.shape == (
                hr.shape[0],
                hr.shape[1] + colour_bar(hr.shape[0]).shape[1],
                3,
            ), name

    # Training tiles carry both blurs, and the prompt store holds the caption naming each tile's blur.
    from pdnsr.data.prompt_store import PromptStore

    store = PromptStore(str(out / 'data' / 'train' / 'prompts_ViT-B-32_random.lmdb'))
    assert store.meta['kind'] == 'text' and len(store) == len(os.listdir(out / 'data' / 'train' / 'HR'))

    # One recipe, two networks: only the network and dataset types (and the prompt store and the DCM temperature,
    # which the baseline does not have) differ.
    base = yaml.safe_load((out / 'options' / 'train_demo_baseline.yml').read_text())
    plus = yaml.safe_load((out / 'options' / 'train_demo_plus.yml').read_text())
    assert (base['network_g']['type'], plus['network_g']['type']) == ('EDSR', 'EDSRPlus')
    assert base['datasets']['train']['type'] == 'PairedImageDataset'
    assert plus['datasets']['train']['type'] == 'PromptPairedImageDataset'
    assert 'temperature' in plus['train']
    assert base['train'] == {k: v for k, v in plus['train'].items() if k != 'temperature'}
    assert base['manual_seed'] == plus['manual_seed'] and base['num_gpu'] == 0
    weights = re.search(r'in a browser: pdnsr-app --weights (\S+) ', log)[1]  # the page's model, named for the user
    assert weights == str(out / 'experiments' / 'demo_plus' / 'models' / 'net_g_latest.pth') and os.path.isfile(weights)


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert demo.main(['--iters', '0', '--output', str(tmp_path / 'a')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and '--iters must be a positive' in err

    a_file = tmp_path / 'file'
    a_file.write_text('x')
    assert demo.main(['--output', str(a_file)]) == 2
    assert 'is not a folder' in capsys.readouterr().err

    missing = str(tmp_path / 'nowhere' / 'open_clip_model.bin')
    assert demo.main(['--quick', '--output', str(tmp_path / 'b'), '--clip-pretrained', missing]) == 2
    captured = capsys.readouterr()
    assert captured.err.count('\n') == 1 and 'does not exist' in captured.err
    assert f'CLIP (ViT-B-32) runs with pretrained weights {missing!r}' in captured.out

    assert demo.main(['--no-such-option']) == 2


def test_training_log_lines_are_summarised():
    line = (
        '2026-01-01 10:00:00,000 INFO: [demo_..][epoch:  4, iter:      30, lr:(9.771e-04,)] '
        '[eta: 0:03:38, time (data): 0.871 (0.201)] l_pix: 4.5320e-02 temperature: 3.1000e+01 \n'
    )
    assert demo._summarise(line, 200) == 'iter    30/200  l_pix 0.0453  T 31  eta 0:03:38'
    assert demo._summarise('2026-01-01 10:00:00,000 INFO: Start training from epoch: 0, iter: 0', 200) is None
