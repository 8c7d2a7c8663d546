"""Write every option file in options/ from one recipe table, so the paper's experiments cannot drift apart.

    python scripts/make_option_files.py           # (re)write options/*.yml
    python scripts/make_option_files.py --check   # exit 1 if a file differs from what this script writes

The files are plain basicsr option files: edit a dataset path in the YAML directly if you like, or change the
table here and re-run. tests/test_options.py checks that the committed files equal this script's output and that
each one builds its network and model.
"""

import argparse
import math
import os
import sys
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS_DIR = os.path.join(ROOT, 'options')
sys.path.insert(0, ROOT)  # run from a checkout that was not pip-installed

from pdnsr import options as opts  # noqa: E402  (importing pdnsr registers the networks the builders look up)
from pdnsr.utils.files import write_text  # noqa: E402

# Sub-images of COCO train2017 written by scripts/data_preparation/prepare_coco.py with its defaults. The log of
# that script prints the real count: put it here and re-run this script if yours differs.
COCO_SUBIMAGES = 118287
FFHQ_IMAGES = 70000
BATCH = 16
EPOCHS = 100
LR_PATCH = 48

NETWORKS = {
    # name: (baseline type, "+" type, paper-size arguments)
    'edsr': ('EDSR', 'EDSRPlus', dict(num_feat=64, num_block=16, res_scale=1)),
    'rcan': ('RCAN', 'RCANPlus', dict(num_feat=64, num_group=10, num_block=20, squeeze_factor=16, res_scale=1)),
    'rdn': ('RDN', 'RDNPlus', dict(num_feat=64, num_block=16, num_layer=8, growth=64)),
    # Beyond the paper: ESRGAN's RRDBNet and classical-SR SwinIR-M (the arguments of its published x4 models).
    'rrdbnet': ('RRDBNet', 'RRDBNetPlus', dict(num_feat=64, num_block=23, num_grow_ch=32)),
    'swinir': (
        'SwinIR',
        'SwinIRPlus',
        dict(
            img_size=48,
            window_size=8,
            img_range=1.0,
            depths=[6] * 6,
            embed_dim=180,
            num_heads=[6] * 6,
            mlp_ratio=2,
            upsampler='pixelshuffle',
            resi_connection='1conv',
        ),
    ),
}
DCM = dict(num_kernels=4, kernel_size=3, router_hidden=128, use_attention=True, use_dynamic=True, router='scaled')
ROUTER_NOTE = "scaled: the router reads the unit prompt times sqrt(d); paper: the paper's literal router (docs/dcm.md)"
# The training speed options of pdnsr.models.train_options, off in every recipe (docs/benchmarks.md measures them).
SPEED = dict(amp=False, channels_last=False, compile=False, accumulate=1)
SPEED_NOTES = {
    'amp': 'bf16 | fp16 | false: autocast for forward and loss (fp16 with a GradScaler saved in the training state)',
    'channels_last': 'network and inputs in channels-last memory format (faster convolutions on GPUs)',
    'compile': 'true | {mode: max-autotune}: torch.compile of net_g for the training step',
    'accumulate': "N: each iteration's batch in N micro-batches, same result with 1/N of the activation memory",
}
TEMPERATURE = dict(init=34, step=3, every_epochs=10, min=1)  # the paper's schedule, written out to be seen
PROMPT_DIM_NOTE = 'CLIP ViT-B-32; must equal the d of the prompt stores'

COCO_TEST_SETS = [  # (name, prompt kind): Set5 / Set14 have human captions; Urban100 has none, so image prompts
    ('Set5', 'text'),
    ('Set14', 'text'),
    ('Urban100', 'image'),
]


@dataclass
class Experiment:
    """One training option file and, if ``test`` names one, its test option file. Titles may use ``{label}`` (the
    network type) and ``{scale}``."""

    name: str
    net: str  # a key of NETWORKS
    plus: bool
    scale: int
    data: str  # 'coco' (COCO, tested on Set5 / Set14 / Urban100) or 'faces' (FFHQ, tested on CelebA-HQ)
    title: str
    test: str = None
    test_title: str = None
    dcm: dict = field(default_factory=dict)  # DCM options that differ from DCM
    pretrain: str = None  # a published BasicSR checkpoint of the baseline to start from
    pretrain_key: str = 'params'  # its param_key_g: params (BasicSR's zoo, SwinIR) or params_ema (Real-ESRGAN)


T1 = 'Table 1: PDN (RCAN+) x{scale} on COCO with text prompts'
T1_TEST = 'Table 1: PDN (RCAN+) x{scale} on Set5 / Set14 (captions) and Urban100 (image prompts)'
T1_FACES = 'Table 1: PDN (RCAN+) x{scale} on FFHQ with image prompts (flipped LR view)'
T1_FACES_TEST = 'Table 1: PDN (RCAN+) x{scale} on CelebA-HQ with image prompts'
T3 = 'Table 3: {label} x4 on COCO (baseline and "+" share this recipe)'
T3_TEST = 'Table 3: {label} x4 on Set5 / Set14 / Urban100'
T4_DY = 'Table 4: EDSR+ x4 without the dynamic convolution (w/o dy)'
T4_ATT = 'Table 4: EDSR+ x4 without the attention (w/o att)'
FINETUNE = 'RCAN+ x4 fine-tuned from a published BasicSR RCAN x4 checkpoint (only the DCMs start from scratch)'
RCAN_BIX4 = 'experiments/pretrained_models/RCAN_BIX4-official.pth'  # RCAN_BIX4 from BasicSR's model zoo
BEYOND = 'Beyond the paper: {label} x4 on COCO with the Table 3 recipe (baseline and "+" share it)'
BEYOND_TEST = 'Beyond the paper: {label} x4 on Set5 / Set14 / Urban100'
FT_RRDB = "RRDBNet+ x4 fine-tuned from Real-ESRGAN's RealESRGAN_x4plus (params_ema; only the DCMs start from scratch)"
REALESRGAN = 'experiments/pretrained_models/RealESRGAN_x4plus.pth'  # Real-ESRGAN v0.1.0 release
FT_SWINIR = 'SwinIR+ x4 fine-tuned from the official SwinIR-M classical x4 model (DIV2K, 48 px patches, window 8)'
SWINIR_M = 'experiments/pretrained_models/001_classicalSR_DIV2K_s48w8_SwinIR-M_x4.pth'  # SwinIR v0.0 release

EXPERIMENTS = [
    # Table 1: PDN = RCAN+ on COCO (x2, x4) and on FFHQ (x8, x16).
    Experiment('train_rcan_x2', 'rcan', True, 2, 'coco', T1, 'test_rcan_x2', T1_TEST),
    Experiment('train_rcan_x4', 'rcan', True, 4, 'coco', T1, 'test_rcan_x4', T1_TEST),
    Experiment('train_rcan_x8_ffhq', 'rcan', True, 8, 'faces', T1_FACES, 'test_rcan_x8_celebahq', T1_FACES_TEST),
    Experiment('train_rcan_x16_ffhq', 'rcan', True, 16, 'faces', T1_FACES, 'test_rcan_x16_celebahq', T1_FACES_TEST),
    # Table 3: EDSR / RCAN / RDN and their "+" twins at x4 on COCO, from one recipe (RCAN+ is train_rcan_x4).
    Experiment('train_edsr_baseline_x4', 'edsr', False, 4, 'coco', T3, 'test_edsr_baseline_x4', T3_TEST),
    Experiment('train_edsr_x4', 'edsr', True, 4, 'coco', T3, 'test_edsr_x4', T3_TEST),
    Experiment('train_rcan_baseline_x4', 'rcan', False, 4, 'coco', T3, 'test_rcan_baseline_x4', T3_TEST),
    Experiment('train_rdn_baseline_x4', 'rdn', False, 4, 'coco', T3, 'test_rdn_baseline_x4', T3_TEST),
    Experiment('train_rdn_x4', 'rdn', True, 4, 'coco', T3, 'test_rdn_x4', T3_TEST),
    # Table 4: EDSR+ ablations.
    Experiment('train_edsr_x4_no_dynamic', 'edsr', True, 4, 'coco', T4_DY, dcm=dict(use_dynamic=False)),
    Experiment('train_edsr_x4_no_attention', 'edsr', True, 4, 'coco', T4_ATT, dcm=dict(use_attention=False)),
    # Fine-tuning RCAN+ from a published BasicSR RCAN checkpoint: only the DCM keys are new.
    Experiment('finetune_rcan_x4_from_basicsr', 'rcan', True, 4, 'coco', FINETUNE, pretrain=RCAN_BIX4),
    # Beyond the paper: DCMs after each RRDB of ESRGAN's RRDBNet / each RSTB of SwinIR (PromptGuided placements).
    Experiment(
        'train_rrdbnet_baseline_x4', 'rrdbnet', False, 4, 'coco', BEYOND, 'test_rrdbnet_baseline_x4', BEYOND_TEST
    ),
    Experiment('train_rrdbnet_x4', 'rrdbnet', True, 4, 'coco', BEYOND, 'test_rrdbnet_x4', BEYOND_TEST),
    Experiment('train_swinir_baseline_x4', 'swinir', False, 4, 'coco', BEYOND, 'test_swinir_baseline_x4', BEYOND_TEST),
    Experiment('train_swinir_x4', 'swinir', True, 4, 'coco', BEYOND, 'test_swinir_x4', BEYOND_TEST),
    Experiment(
        'finetune_rrdbnet_x4_from_realesrgan',
        'rrdbnet',
        True,
        4,
        'coco',
        FT_RRDB,
        pretrain=REALESRGAN,
        pretrain_key='params_ema',
    ),
    Experiment('finetune_swinir_x4_from_official', 'swinir', True, 4, 'coco', FT_SWINIR, pretrain=SWINIR_M),
]


def total_iters(num_images):
    return EPOCHS * math.ceil(num_images / BATCH)


def face_hr_size(scale):
    """HR side of the prepared faces: 48x48 LR patches need 384 px at x8 and 768 px at x16
    (prepare_faces.py --hr-size 512 / 1024)."""
    return 512 if scale <= 8 else 1024


def benchmark_set(name, kind, scale, plus):
    """A test set written by prepare_benchmark.py (docs/data_preparation.md)."""
    root = f'datasets/{name}_x{scale}'
    store = 'prompts_text.lmdb' if kind == 'text' else f'prompts_{kind}_x{scale}.lmdb'
    return opts.dataset(name, f'{root}/HR', f'{root}/LRx{scale}', f'{root}/{store}', plus)


def celebahq_set(scale, plus):
    root = f'datasets/celebahq_{face_hr_size(scale)}'
    return opts.dataset('CelebA-HQ', f'{root}/HR', f'{root}/LRx{scale}', f'{root}/prompts_image_x{scale}.lmdb', plus)


def train_set(data, scale, plus):
    """(training dataset, its image count, its name) of the folder layouts of scripts/data_preparation/."""
    if data == 'coco':
        root, gt, prompts, name, count = 'datasets/coco_train', 'GT', 'prompts_text.lmdb', 'COCO', COCO_SUBIMAGES
    else:
        root, gt, name, count = f'datasets/ffhq_{face_hr_size(scale)}', 'HR', 'FFHQ', FFHQ_IMAGES
        prompts = f'prompts_image_x{scale}.lmdb'
    dataset = opts.train_dataset(
        name, f'{root}/{gt}', f'{root}/LRx{scale}', LR_PATCH * scale, BATCH, f'{root}/{prompts}', plus, workers=6
    )
    return dataset, count, name


def test_sets(data, scale, plus):
    if data == 'faces':
        return [celebahq_set(scale, plus)]
    return [benchmark_set(name, kind, scale, plus) for name, kind in COCO_TEST_SETS]


def network(exp):
    base_type, plus_type, args = NETWORKS[exp.net]
    return opts.network(plus_type if exp.plus else base_type, exp.scale, dcm={**DCM, **exp.dcm}, **args)


def title(exp, template):
    return template.format(label=NETWORKS[exp.net][1 if exp.plus else 0], scale=exp.scale)


def train_file(exp):
    """(option dict, comments) of the training file of ``exp``."""
    dataset, count, dataset_name = train_set(exp.data, exp.scale, exp.plus)
    iters = total_iters(count)
    opt = opts.train_options(
        exp.name,
        network(exp),
        dataset,
        exp.scale,
        iters,
        1e-4,
        val_sets=dict(val=test_sets(exp.data, exp.scale, exp.plus)[0]),
        num_gpu='auto',
        temperature=TEMPERATURE,
        checkpoint_freq=5e3,
        val_freq=5e3,
        use_tb_logger=True,
    )
    opt['train'].update(SPEED)
    opt['logger']['wandb'] = dict(project=None, resume_id=None)
    opt['dist_params'] = dict(backend='nccl', port=29500)
    comments = {
        (): [title(exp, exp.title), f'python pdnsr/train.py -opt options/{exp.name}.yml'],
        ('datasets', 'train', 'gt_size'): f'LR patches of {LR_PATCH}x{LR_PATCH}',
        ('train', 'ema_decay'): "basicsr's EMA (e.g. 0.999) is not part of the paper's recipe",
        ('train', 'total_iter'): [
            f'{EPOCHS} epochs = {EPOCHS} * ceil(N * dataset_enlarge_ratio / (batch_size_per_gpu * GPUs))',
            f'           = {EPOCHS} * ceil({count} / {BATCH}) with N = {count} {dataset_name} training images on '
            'one GPU.',
            'Change N (or the GPU count) and total_iter / periods together.',
        ],
    }
    comments.update({('train', key): note for key, note in SPEED_NOTES.items()})
    if exp.plus:
        comments[('network_g', 'prompt_dim')] = PROMPT_DIM_NOTE
        comments[('network_g', 'dcm', 'router')] = ROUTER_NOTE
        comments[('train', 'temperature')] = 'router softmax temperature: init - step every every_epochs epochs, >= min'
    if exp.pretrain:
        opt['path'] = dict(
            pretrain_network_g=exp.pretrain, param_key_g=exp.pretrain_key, strict_load_g=False, resume_state=None
        )
        comments[('path', 'pretrain_network_g')] = [
            f'Start from a published BasicSR {NETWORKS[exp.net][0]} checkpoint: backbone names are identical, so '
            'only the DCM',
            'keys are missing (strict_load_g: false); param_key_g picks params or params_ema.',
        ]
    return opt, comments


def test_file(exp):
    """(option dict, comments) of the test file of ``exp``."""
    sets = {f'test_{i + 1}': s for i, s in enumerate(test_sets(exp.data, exp.scale, exp.plus))}
    weights = f'experiments/{exp.name}/models/net_g_latest.pth'
    opt = opts.test_options(exp.test, network(exp), sets, exp.scale, weights, num_gpu='auto')
    comments = {
        (): [title(exp, exp.test_title), f'python pdnsr/test.py -opt options/{exp.test}.yml'],
        ('val', 'metrics', 'psnr'): [  # no-reference and slow: offered, not on by default
            'niqe:',
            '  type: calculate_niqe',
            f'  crop_border: {exp.scale}',
        ],
    }
    if exp.plus:
        comments[('network_g', 'prompt_dim')] = PROMPT_DIM_NOTE
        comments[('val', 'save_attention')] = 'or DCM indices, e.g. [0, -1]: heat maps beside the SR images'
    return opt, comments


def all_files():
    """{file name: YAML text} of every option file."""
    files = {}
    for exp in EXPERIMENTS:
        files[exp.name] = opts.to_yaml(*train_file(exp))
        if exp.test:
            files[exp.test] = opts.to_yaml(*test_file(exp))
    return files


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--check', action='store_true', help='only compare; exit 1 when a file is out of date')
    args = parser.parse_args(argv)
    stale = []
    for name, text in all_files().items():
        path = os.path.join(OPTIONS_DIR, f'{name}.yml')
        current = open(path, encoding='utf-8').read() if os.path.isfile(path) else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            write_text(path, text)
    if args.check and stale:
        print('out of date (run python scripts/make_option_files.py):\n  ' + '\n  '.join(stale), file=sys.stderr)
        return 1
    print(f'{len(stale)} option file(s) written' if not args.check else 'option files up to date')
    return 0


if __name__ == '__main__':
    sys.exit(main())
