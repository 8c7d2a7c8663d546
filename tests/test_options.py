"""Every option file in options/ is current, parses with basicsr's loader and builds its network and model."""

import copy
import glob
import os
import sys

import commands
import pytest
import yaml
from basicsr.models import build_model
from basicsr.utils.options import ordered_yaml

from conftest import REPO_ROOT

OPTION_FILES = sorted(glob.glob(os.path.join(REPO_ROOT, 'options', '*.yml')))


def test_option_files_match_their_generator():
    proc = commands.run([sys.executable, os.path.join(REPO_ROOT, 'scripts', 'make_option_files.py'), '--check'])
    assert proc.returncode == 0, proc.stderr


def test_there_is_an_option_file_per_experiment():
    names = {os.path.basename(p)[:-4] for p in OPTION_FILES}
    expected = {
        'train_rcan_x2',
        'train_rcan_x4',
        'train_rcan_x8_ffhq',
        'train_rcan_x16_ffhq',
        'train_edsr_x4',
        'train_edsr_baseline_x4',
        'train_rcan_baseline_x4',
        'train_rdn_x4',
        'train_rdn_baseline_x4',
        'train_edsr_x4_no_dynamic',
        'train_edsr_x4_no_attention',
        'finetune_rcan_x4_from_basicsr',
    }
    assert expected <= names
    assert all(
        n.replace('train_', 'test_', 1) in names or not n.startswith('train_rcan_x') or 'ffhq' in n for n in names
    )


@pytest.mark.slow
@pytest.mark.parametrize('path', OPTION_FILES, ids=os.path.basename)
def test_option_file_builds_network_and_model(path):
    with open(path) as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    assert opt['model_type'] == 'PDNModel'
    is_train = os.path.basename(path).startswith(('train_', 'finetune_'))
    if is_train:
        assert opt['datasets']['train']['gt_size'] == 48 * opt['scale']
        assert opt['train']['optim_g']['betas'] == [0.9, 0.999] and opt['train']['optim_g']['lr'] == 1e-4
        assert opt['train']['scheduler']['type'] == 'CosineAnnealingRestartLR'
    net_type = opt['network_g']['type']
    if net_type.endswith('Plus'):
        assert all('dataroot_prompt' in d for d in opt['datasets'].values())
    # Without data: the datasets section is what a user provides; everything else must build as written.
    opt = copy.deepcopy(opt)
    opt.update(is_train=is_train, dist=False, rank=0, world_size=1, num_gpu=0, auto_resume=False, datasets={})
    opt['path']['pretrain_network_g'] = None
    model = build_model(opt)
    assert type(model.get_bare_model(model.net_g)).__name__ == net_type
