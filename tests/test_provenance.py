"""A model's record of its prompts (:mod:`pdnsr.provenance`) through the real commands.

Checkpoints come from ``pdnsr/train.py`` (a subprocess, the slow tests) or from PDNModel's own ``save_network`` in
this process (``build_in_process``: the same code, without the training loop). The prompt stores are the real
builder's, from the real open_clip architectures with random weights (``--clip-pretrained none``: no hub here),
seeded: ViT-B-32 of seed 0 (the session's ``paired_data``), of seed 1 (another embedding space), ViT-B-16, and a
ViT-S-32-alt saved as a local weights file (identified by its SHA-256). Tiny EDSR+ networks (8 features, 1 block).
"""

import hashlib
import os

import commands
import cv2
import numpy as np
import pytest
import torch

from conftest import load_script
from pdnsr import options as opts
from pdnsr import provenance
from pdnsr.checkpoints import dcm_layout_of
from pdnsr.data.image_files import read_rgb
from pdnsr.errors import UserError
from pdnsr.inference import Upsampler
from pdnsr.models.pdn_model import build_in_process
from pdnsr.models.run_checks import check_run_options, preflight
from pdnsr.prompts.build import build_prompt_store
from pdnsr.prompts.encoder import PromptEncoder
from pdnsr.tools.experiments.runs import weights_path
from pdnsr.tools.infer import main as infer_main

TINY = dict(num_feat=8, num_block=1)
SEED0 = {'model_name': 'ViT-B-32', 'weights': 'random-seed-0', 'kind': 'image', 'view': 'flip'}


def train_options(data, name, store=None, dcm=None, prompt_dim=512, iters=2, ema_decay=0.9):
    """A tiny EDSR+ training run on ``paired_data`` (its image store, or ``store``)."""
    network = opts.network('EDSRPlus', 2, prompt_dim=prompt_dim, dcm=dcm, **TINY)
    train_set = opts.train_dataset('tiny', data['hr'], data['lr'], 32, 2, store or data['image_store'], True)
    return opts.train_options(name, network, train_set, 2, iters, 1e-3, ema_decay=ema_decay, print_freq=1)


def save_in_process(opt, folder):
    """The checkpoint PDNModel saves for ``opt`` right after it is built (its real ``save_network``)."""
    model = build_in_process(opt)
    model.opt['path']['models'] = str(folder)
    os.makedirs(folder, exist_ok=True)
    model.save_network(model.net_g, 'net_g', -1)
    return os.path.join(str(folder), 'net_g_latest.pth')


def network_file(network_g, path):
    return str(opts.write_options({'network_g': network_g}, path))


def infer(capsys, opt_file, weights, out, *extra):
    """``pdnsr-infer`` in this process; (exit status, stderr)."""
    code = infer_main(['--opt', opt_file, '--weights', weights, '--output', str(out), *extra])
    return code, capsys.readouterr().err


def error_lines(text):
    return [line for line in text.splitlines() if 'error:' in line]


def sr_of(opt_file, weights, lq_path, prompt):
    """What the library computes for one LR file and a (1, d) prompt: (H, W, 3) uint8 BGR."""
    up = Upsampler.from_checkpoint(weights, opt_file, 'cpu')
    return up.enhance(read_rgb(lq_path), prompt)[..., ::-1]


def test_record(tmp_path, paired_data, clip_encoder):
    """Unit rules: what names an embedding space, and what a mismatch says."""
    assert provenance.weights_id('none', 3) == 'random-seed-3'
    assert provenance.weights_id('openai') == 'openai'
    blob = tmp_path / 'open_clip_model.bin'
    blob.write_bytes(b'weights')
    assert provenance.weights_id(str(blob)) == f'sha256:{hashlib.sha256(b"weights").hexdigest()}'
    image = provenance.encoder_record({**clip_encoder.metadata(), 'kind': 'image', 'view': 'flip'})
    assert image == SEED0
    text = dict(image, kind='text', view=None)
    assert provenance.same_space(image, text) and provenance.prompts_differ(image, text) == ['kind']
    assert provenance.prompts_differ(image, dict(image, view='identity')) == ['view']
    other = dict(image, weights='random-seed-1')
    assert not provenance.same_space(image, other)
    with pytest.raises(UserError, match=r'random-seed-1.*trained on prompts of .*random-seed-0.*--force-encoder'):
        provenance.check_same_space(image, other, 'the model', 'the store')
    warnings = []
    provenance.check_same_space(image, other, 'the model', 'the store', force=True, warn=warnings.append)
    provenance.check_same_space(image, text, 'the model', 'the store', warn=warnings.append)
    assert len(warnings) == 2 and 'continuing anyway' in warnings[0]
    assert 'kind text' in warnings[1] and 'kind image' in warnings[1]


# ---------------------------------------------------------------------------------------------------------------------
# checkpoints saved in this process (PDNModel.save_network): fast
@pytest.fixture(scope='module')
def saved(paired_data, tmp_path_factory):
    """Checkpoints of a tiny EDSR+ on the seed-0 image store: default DCMs, and ``dcm: {router: paper}``."""
    root = tmp_path_factory.mktemp('saved')
    default = train_options(paired_data, 'saved', ema_decay=0)
    paper_router = train_options(paired_data, 'saved_paper_router', dcm=dict(router='paper'), ema_decay=0)
    return {
        'root': root,
        'opt': default,
        'weights': save_in_process(default, root / 'default'),
        'yml': network_file(default['network_g'], root / 'net.yml'),
        'paper_router': save_in_process(paper_router, root / 'paper_router'),
        'paper_router_yml': network_file(paper_router['network_g'], root / 'paper_router.yml'),
    }


def test_in_process_save_records_the_store_and_layout(saved):
    ckpt = torch.load(saved['weights'], map_location='cpu', weights_only=True)
    assert set(ckpt) == {'params', 'pdnsr'}
    assert ckpt['pdnsr'] == {
        'format': 1,
        'prompt_encoder': SEED0,
        'prompt_dim': 512,
        'dcm': {'bank': 'paper', 'router': 'scaled'},
        'network_g': saved['opt']['network_g'],
    }
    assert torch.load(saved['paper_router'], weights_only=True)['pdnsr']['dcm'] == {'bank': 'paper', 'router': 'paper'}


def test_convert_keeps_the_record_with_the_compact_bank(saved, tmp_path, capsys):
    convert = load_script('convert_dcm_bank')
    out = tmp_path / 'compact.pth'
    assert convert.main([saved['weights'], str(out)]) == 0
    before = torch.load(saved['weights'], weights_only=True)['pdnsr']
    ckpt = torch.load(out, weights_only=True)
    assert dcm_layout_of(ckpt['params']) == {'bank': 'compact', 'router': 'scaled'}
    assert ckpt['pdnsr']['dcm'] == {'bank': 'compact', 'router': 'scaled'}
    dcm = {**before['network_g'].get('dcm', {}), 'bank': 'compact'}
    assert ckpt['pdnsr']['network_g'] == {**before['network_g'], 'dcm': dcm}
    assert ckpt['pdnsr']['prompt_encoder'] == before['prompt_encoder'] == SEED0

    # A record without network_g (hand-made, or of an older pdnsr) is kept as it is, with the new bank.
    bare = torch.load(saved['paper_router'], weights_only=True)
    del bare['pdnsr']['network_g']
    torch.save(bare, tmp_path / 'no_network_g.pth')
    capsys.readouterr()
    assert convert.main([str(tmp_path / 'no_network_g.pth'), str(tmp_path / 'converted.pth')]) == 0, capsys.readouterr()
    record = torch.load(tmp_path / 'converted.pth', weights_only=True)['pdnsr']
    assert record['dcm'] == {'bank': 'compact', 'router': 'paper'} and 'network_g' not in record


def test_infer_refuses_another_encoder_before_loading_it(saved, paired_data, tmp_path, capsys):
    lq = os.path.join(paired_data['lr'], 'coffee.png')
    code, err = infer(capsys, saved['yml'], saved['weights'], tmp_path / 'out', '--input', lq, '--prompt', 'a cup',
                      '--clip-pretrained', 'openai')  # fmt: skip
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and 'Traceback' not in err, err
    # Both encoders named; 'openai' is not loadable here, so refusing it first shows the check runs before loading.
    assert 'ViT-B-32 with weights openai' in lines[0] and 'ViT-B-32 with weights random-seed-0' in lines[0]
    assert '--force-encoder' in lines[0] and not (tmp_path / 'out').exists()


def test_infer_checkpoint_without_record_warns_once(saved, paired_data, tmp_path, capsys, clip_encoder):
    old = torch.load(saved['weights'], weights_only=True)
    del old['pdnsr']  # what basicsr or an older pdnsr wrote
    torch.save(old, tmp_path / 'old.pth')
    lq = os.path.join(paired_data['lr'], 'coffee.png')
    code, err = infer(capsys, saved['yml'], str(tmp_path / 'old.pth'), tmp_path / 'out', '--input', lq,
                      '--prompt', 'a cup', '--clip-pretrained', 'none')  # fmt: skip
    warnings = [line for line in err.splitlines() if 'warning' in line]
    assert code == 0 and len(warnings) == 1 and 'does not record the prompt encoder' in warnings[0], err
    written = cv2.imread(str(tmp_path / 'out' / 'coffee_pdnsr.png'))
    expected = sr_of(saved['yml'], saved['weights'], lq, clip_encoder.encode_text(['a cup']))
    assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1


def test_compact_checkpoint_with_its_paper_option_file(saved, paired_data, tmp_path, capsys, clip_encoder):
    """pdnsr-infer reads the bank from the checkpoint: a converted file with the option file it was trained with
    gives the original's output; a paper file with a compact option file is converted on the fly."""
    assert load_script('convert_dcm_bank').main([saved['weights'], str(tmp_path / 'compact.pth')]) == 0
    compact_yml = network_file({**saved['opt']['network_g'], 'dcm': {'bank': 'compact'}}, tmp_path / 'compact.yml')
    lq = os.path.join(paired_data['lr'], 'chelsea.png')
    expected = sr_of(saved['yml'], saved['weights'], lq, clip_encoder.encode_text(['a cat']))
    for name, opt_file, weights in (
        ('compact_file', saved['yml'], str(tmp_path / 'compact.pth')),
        ('compact_option', compact_yml, saved['weights']),
    ):
        code, err = infer(capsys, opt_file, weights, tmp_path / name, '--input', lq, '--prompt', 'a cat')
        assert code == 0, err
        written = cv2.imread(str(tmp_path / name / 'chelsea_pdnsr.png'))
        assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1, name


@pytest.mark.parametrize('direction', ['paper_file_scaled_network', 'scaled_file_paper_network'])
def test_infer_refuses_the_other_router(saved, paired_data, tmp_path, capsys, direction):
    if direction == 'paper_file_scaled_network':
        opt_file, weights, wanted = saved['yml'], saved['paper_router'], 'dcm: {router: paper}'
    else:
        opt_file, weights, wanted = saved['paper_router_yml'], saved['weights'], 'dcm: {router: scaled}'
    code, err = infer(capsys, opt_file, weights, tmp_path / 'out', '--input', paired_data['lr'], '--prompt', 'a cat')
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and wanted in lines[0] and 'Traceback' not in err, err
    assert not (tmp_path / 'out').exists()


def test_force_encoder_must_be_a_boolean(saved, tmp_path):
    opt = opts.test_options('t', saved['opt']['network_g'], {'test_1': saved['opt']['datasets']['train']}, 2,
                            saved['weights'])  # fmt: skip
    check_run_options(dict(opt, force_encoder=True, is_train=False))
    with pytest.raises(ValueError, match=r"force_encoder must be true or false, got 'false'"):
        preflight('test', ['-opt', str(opts.write_options(dict(opt, force_encoder='false'), tmp_path / 't.yml'))])


# ---------------------------------------------------------------------------------------------------------------------
# a pdnsr/train.py run, pdnsr-infer and pdnsr/test.py on it: slow
@pytest.fixture(scope='module')
def trained(paired_data, tmp_path_factory):
    """Two iterations of ``pdnsr/train.py`` (EMA on) on the seed-0 image store."""
    root = tmp_path_factory.mktemp('trained')
    opt = train_options(paired_data, 'prov')
    result = commands.launch(opt, root, 'train')
    assert result.returncode == 0, result.tail
    return {
        'root': root,
        'opt': opt,
        'weights': weights_path(str(root), 'prov'),
        'yml': network_file(opt['network_g'], root / 'net.yml'),
    }


@pytest.mark.slow
def test_training_saves_carry_the_record(trained):
    expected = {
        'format': 1,
        'prompt_encoder': SEED0,
        'prompt_dim': 512,
        'dcm': {'bank': 'paper', 'router': 'scaled'},
        'network_g': trained['opt']['network_g'],
    }
    for which in ('2', 'latest'):
        ckpt = torch.load(weights_path(str(trained['root']), 'prov', which), map_location='cpu', weights_only=True)
        assert set(ckpt) == {'params', 'params_ema', 'pdnsr'}
        assert ckpt['pdnsr'] == expected


@pytest.mark.slow
def test_infer_uses_the_checkpoints_encoder(trained, paired_data, tmp_path, capsys, clip_encoder):
    lq = os.path.join(paired_data['lr'], 'rocket.png')
    run = ['--input', lq, '--prompt', 'a rocket on a launch pad']
    code, err = infer(capsys, trained['yml'], trained['weights'], tmp_path / 'default', *run)
    assert code == 0 and 'warning' not in err, err  # no --clip-pretrained: the recorded random-seed-0 ViT-B-32
    expected = sr_of(trained['yml'], trained['weights'], lq, clip_encoder.encode_text(['a rocket on a launch pad']))
    written = cv2.imread(str(tmp_path / 'default' / 'rocket_pdnsr.png'))
    assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1

    other = ['--clip-model', 'ViT-B-16', '--clip-pretrained', 'none']  # also 512-d, another space
    code, err = infer(capsys, trained['yml'], trained['weights'], tmp_path / 'refused', *run, *other)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and 'ViT-B-16 with weights random-seed-0' in lines[0], err
    assert 'ViT-B-32 with weights random-seed-0' in lines[0] and not (tmp_path / 'refused').exists()

    code, err = infer(capsys, trained['yml'], trained['weights'], tmp_path / 'forced', *run, *other, '--force-encoder')
    assert code == 0, err
    warnings = [line for line in err.splitlines() if 'warning' in line]
    assert len(warnings) == 1 and 'ViT-B-16' in warnings[0] and 'continuing anyway' in warnings[0], err
    assert os.listdir(tmp_path / 'forced') == ['rocket_pdnsr.png']


def run_test_script(root, opt, name):
    """``pdnsr/test.py`` on ``opt`` (named ``name``) in a subprocess whose ``results/<name>`` already exists: basicsr
    would rename it to ``<name>_archived_<time>``. Returns (exit status, log)."""
    results = os.path.join(str(root), 'results', name)
    os.makedirs(results, exist_ok=True)
    open(os.path.join(results, 'earlier.txt'), 'w').close()
    result = commands.launch(dict(opt, name=name), root, 'test')
    return result.returncode, open(result.log_path, encoding='utf-8').read()


def assert_refused_before_folders(root, name, code, log, *names):
    lines = error_lines(log)
    assert code == 2 and len(lines) == 1 and 'Traceback' not in log, log[-3000:]
    assert all(n in lines[0] for n in names), lines[0]
    assert os.listdir(os.path.join(str(root), 'results')).count(name) == 1
    assert not any(n.startswith(f'{name}_archived') for n in os.listdir(os.path.join(str(root), 'results')))
    assert os.listdir(os.path.join(str(root), 'results', name)) == ['earlier.txt']


@pytest.mark.slow
def test_test_script_refuses_another_encoders_store_before_any_folder(trained, paired_data, tmp_path):
    seed1 = PromptEncoder('ViT-B-32', pretrained='none', seed=1)
    store = str(tmp_path / 'prompts_seed1.lmdb')
    build_prompt_store('image', store, seed1, images_dir=paired_data['lr'], progress=False)
    test_set = opts.dataset('tinytest', paired_data['hr'], paired_data['lr'], store, True)
    opt = opts.test_options('x', trained['opt']['network_g'], {'test_1': test_set}, 2, trained['weights'])

    code, log = run_test_script(tmp_path, opt, 'seed1')
    assert_refused_before_folders(tmp_path, 'seed1', code, log, 'random-seed-1', 'random-seed-0', store,
                                  'force_encoder: true')  # fmt: skip
    code, log = run_test_script(tmp_path, dict(opt, force_encoder='false'), 'string')
    assert_refused_before_folders(tmp_path, 'string', code, log, "force_encoder must be true or false, got 'false'")

    code, log = run_test_script(tmp_path, dict(opt, force_encoder=True), 'forced')
    assert code == 0, log[-3000:]
    warnings = [line for line in log.splitlines() if 'WARNING' in line and 'random-seed-1' in line]
    assert len(warnings) == 1 and 'continuing anyway' in warnings[0], log[-3000:]
    assert os.path.isfile(tmp_path / 'results' / 'forced' / 'metrics.md')


@pytest.mark.slow
def test_test_script_bank_and_router(trained, saved, paired_data, tmp_path):
    """A compact file with its paper option file, and a paper-router file in a scaled network, are refused before
    any folder with the option to set; a paper file for a compact network is converted on the fly. The last run
    also tests an image-prompt model on text prompts: one warning naming both kinds."""
    compact = str(tmp_path / 'compact.pth')
    assert load_script('convert_dcm_bank').main([trained['weights'], compact]) == 0
    network_g = trained['opt']['network_g']
    test_set = opts.dataset('tinytest', paired_data['hr'], paired_data['lr'], paired_data['text_store'], True)

    code, log = run_test_script(tmp_path, opts.test_options('x', network_g, {'test_1': test_set}, 2, compact), 'c')
    assert_refused_before_folders(tmp_path, 'c', code, log, compact, 'dcm: {bank: compact}')
    router = opts.test_options('x', network_g, {'test_1': test_set}, 2, saved['paper_router'])
    code, log = run_test_script(tmp_path, router, 'r')
    assert_refused_before_folders(tmp_path, 'r', code, log, saved['paper_router'], 'dcm: {router: paper}')

    on_the_fly = {**network_g, 'dcm': {'bank': 'compact'}}
    opt = opts.test_options('x', on_the_fly, {'test_1': test_set}, 2, trained['weights'], param_key='params_ema')
    code, log = run_test_script(tmp_path, opt, 'fly')
    assert code == 0, log[-3000:]
    assert os.path.isfile(tmp_path / 'results' / 'fly' / 'metrics.md')
    kinds = [line for line in log.splitlines() if 'WARNING' in line and 'kind text' in line]
    assert len(kinds) == 1 and 'kind image' in kinds[0], log[-3000:]


@pytest.mark.slow
def test_weights_file_is_recorded_by_its_hash(paired_data, tmp_path, capsys):
    """A local CLIP weights file: the store and the checkpoint name it by SHA-256; pdnsr-infer asks for it, takes
    it under another path, and refuses another file before loading anything."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model('ViT-S-32-alt', pretrained=None)  # 256-d, the smallest text+image tower
    weights_file = tmp_path / 'clip' / 'open_clip_model.bin'
    weights_file.parent.mkdir()
    torch.save(model.state_dict(), weights_file)
    del model
    digest = hashlib.sha256(weights_file.read_bytes()).hexdigest()
    store = str(tmp_path / 'prompts_file.lmdb')
    build_prompt_store('image', store, PromptEncoder('ViT-S-32-alt', str(weights_file)), images_dir=paired_data['lr'],
                       progress=False)  # fmt: skip
    opt = train_options(paired_data, 'file', store=store, prompt_dim=256, ema_decay=0)
    weights = save_in_process(opt, tmp_path / 'models')
    record = torch.load(weights, weights_only=True)['pdnsr']['prompt_encoder']
    assert record == {'model_name': 'ViT-S-32-alt', 'weights': f'sha256:{digest}', 'kind': 'image', 'view': 'flip'}

    yml = network_file(opt['network_g'], tmp_path / 'net.yml')
    run = ['--input', os.path.join(paired_data['lr'], 'coffee.png'), '--prompt', 'a cup']
    code, err = infer(capsys, yml, weights, tmp_path / 'asked', *run)
    assert code == 2 and '--clip-pretrained /path/to/open_clip_model.bin' in error_lines(err)[0], err
    another = tmp_path / 'another.bin'
    another.write_bytes(b'not these weights')
    code, err = infer(capsys, yml, weights, tmp_path / 'another', *run, '--clip-pretrained', str(another))
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and lines[0].count('ViT-S-32-alt with weights file sha256:') == 2, err
    moved = tmp_path / 'moved.bin'
    os.link(weights_file, moved)  # the same content under another path
    code, err = infer(capsys, yml, weights, tmp_path / 'moved', *run, '--clip-pretrained', str(moved))
    assert code == 0, err
    assert os.listdir(tmp_path / 'moved') == ['coffee_pdnsr.png']
