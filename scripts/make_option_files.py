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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS_DIR = os.path.join(ROOT, 'options')

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
}

COCO_TEST_SETS = [  # (name, prompt kind): Set5 / Set14 have human captions; Urban100 has none, so image prompts
    ('Set5', 'text'),
    ('Set14', 'text'),
    ('Urban100', 'image'),
]


def total_iters(num_images):
    return EPOCHS * math.ceil(num_images / BATCH)


def yaml_value(v):
    if isinstance(v, bool):
        return 'true' if v else 'false'
    if v is None:
        return '~'
    if isinstance(v, float):
        return f'!!float {v:g}'
    return str(v)


def block(indent, mapping):
    pad = ' ' * indent
    return ''.join(f'{pad}{k}: {yaml_value(v)}\n' for k, v in mapping.items())


def network_section(net, plus, scale, dcm=None):
    base_type, plus_type, args = NETWORKS[net]
    text = 'network_g:\n'
    text += block(
        2, {'type': plus_type if plus else base_type, 'num_in_ch': 3, 'num_out_ch': 3, **args, 'upscale': scale}
    )
    if plus:
        text += '  prompt_dim: 512  # CLIP ViT-B-32; must equal the d of the prompt stores\n'
        text += '  dcm:\n' + block(
            4,
            {
                'num_kernels': 4,
                'kernel_size': 3,
                'router_hidden': 128,
                'use_attention': True,
                'use_dynamic': True,
                'temperature': 34.0,
                **(dcm or {}),
            },
        )
    return text


def dataset_section(key, name, root, lq_dir, prompt, phase, scale, plus, gt_dir='HR'):
    """Folder layouts are those written by scripts/data_preparation/ (docs/data_preparation.md)."""
    text = f'  {key}:\n    name: {name}\n'
    text += f'    type: {"PromptPairedImageDataset" if plus else "PairedImageDataset"}\n'
    text += f'    dataroot_gt: {root}/{gt_dir}\n    dataroot_lq: {root}/{lq_dir}\n'
    if plus:
        text += f'    dataroot_prompt: {prompt}\n'
    text += '    io_backend:\n      type: disk\n'
    if phase == 'train':
        text += f'    gt_size: {LR_PATCH * scale}  # LR patches of {LR_PATCH}x{LR_PATCH}\n'
        text += '    use_hflip: true\n    use_rot: true\n'
        text += '    num_worker_per_gpu: 6\n    batch_size_per_gpu: 16\n    dataset_enlarge_ratio: 1\n'
        text += '    prefetch_mode: ~\n'
    return text


def coco_train_data(scale, plus):
    root = 'datasets/coco_train'
    return dataset_section(
        'train', 'COCO', root, f'LRx{scale}', f'{root}/prompts_text.lmdb', 'train', scale, plus, gt_dir='GT'
    )


def benchmark_data(key, name, kind, scale, plus):
    root = f'datasets/{name}_x{scale}'
    store = 'prompts_text.lmdb' if kind == 'text' else f'prompts_{kind}_x{scale}.lmdb'
    return dataset_section(key, name, root, f'LRx{scale}', f'{root}/{store}', 'test', scale, plus)


def face_hr_size(scale):
    """HR side of the prepared faces: 48x48 LR patches need 384 px at x8 and 768 px at x16
    (prepare_faces.py --hr-size 512 / 1024)."""
    return 512 if scale <= 8 else 1024


def face_train_data(scale, plus):
    root = f'datasets/ffhq_{face_hr_size(scale)}'
    return dataset_section(
        'train', 'FFHQ', root, f'LRx{scale}', f'{root}/prompts_image_x{scale}.lmdb', 'train', scale, plus
    )


def face_test_data(key, scale, plus):
    root = f'datasets/celebahq_{face_hr_size(scale)}'
    return dataset_section(
        key, 'CelebA-HQ', root, f'LRx{scale}', f'{root}/prompts_image_x{scale}.lmdb', 'test', scale, plus
    )


def metrics(scale, niqe=False):
    text = (
        '  metrics:\n'
        f'    psnr:\n      type: calculate_psnr\n      crop_border: {scale}\n      test_y_channel: true\n'
        f'    ssim:\n      type: calculate_ssim\n      crop_border: {scale}\n      test_y_channel: true\n'
    )
    if niqe:  # no-reference and slow: offered, not on by default
        text += f'    # niqe:\n    #   type: calculate_niqe\n    #   crop_border: {scale}\n'
    return text


def train_file(
    name, title, net, plus, scale, train_data, val_data, num_images, dataset_name, dcm=None, pretrain=None, lr=1e-4
):
    iters = total_iters(num_images)
    text = f'# {title}\n# python pdnsr/train.py -opt options/{name}.yml\n'
    text += f'name: {name}\nmodel_type: PDNModel\nscale: {scale}\nnum_gpu: auto\nmanual_seed: 0\n\n'
    text += 'datasets:\n' + train_data + val_data + '\n'
    text += network_section(net, plus, scale, dcm) + '\n'
    text += 'path:\n'
    if pretrain:
        text += (
            f'  # Start from a published BasicSR {NETWORKS[net][0]} checkpoint: backbone names are identical, '
            f'so only the DCM\n  # keys are missing (strict_load_g: false); param_key_g picks params or '
            f'params_ema.\n  pretrain_network_g: {pretrain}\n  param_key_g: params\n  strict_load_g: false\n'
        )
    else:
        text += '  pretrain_network_g: ~\n  strict_load_g: true\n'
    text += '  resume_state: ~\n\n'
    text += (
        "train:\n  ema_decay: 0  # basicsr's EMA (e.g. 0.999) is not part of the paper's recipe\n"
        '  optim_g:\n    type: Adam\n'
        f'    lr: !!float {lr:g}\n    weight_decay: 0\n    betas: [0.9, 0.999]\n    eps: !!float 1e-8\n'
        f'  scheduler:\n    type: CosineAnnealingRestartLR\n    periods: [{iters}]\n'
        '    restart_weights: [1]\n    eta_min: !!float 1e-7\n\n'
        f'  # {EPOCHS} epochs = {EPOCHS} * ceil(N * dataset_enlarge_ratio / (batch_size_per_gpu * GPUs))\n'
        f'  #            = {EPOCHS} * ceil({num_images} / {BATCH}) with N = {num_images} {dataset_name} '
        f'training images on one GPU.\n'
        '  # Change N (or the GPU count) and total_iter / periods together.\n'
        f'  total_iter: {iters}\n  warmup_iter: -1\n'
    )
    if plus:
        text += (
            '  temperature:  # router softmax temperature: init - step every every_epochs epochs, >= min\n'
            '    init: 34\n    step: 3\n    every_epochs: 10\n    min: 1\n'
        )
    text += (
        '\n  pixel_opt:\n    type: L1Loss\n    loss_weight: 1.0\n    reduction: mean\n\n'
        'val:\n  val_freq: !!float 5e3\n  save_img: false\n' + metrics(scale) + '\n'
        'logger:\n  print_freq: 100\n  save_checkpoint_freq: !!float 5e3\n  use_tb_logger: true\n'
        '  wandb:\n    project: ~\n    resume_id: ~\n\n'
        'dist_params:\n  backend: nccl\n  port: 29500\n'
    )
    return text


def test_file(name, title, net, plus, scale, test_sets, weights):
    text = f'# {title}\n# python pdnsr/test.py -opt options/{name}.yml\n'
    text += f'name: {name}\nmodel_type: PDNModel\nscale: {scale}\nnum_gpu: auto\nmanual_seed: 0\n\n'
    text += 'datasets:\n' + ''.join(test_sets) + '\n'
    text += network_section(net, plus, scale) + '\n'
    text += (
        'path:\n'
        f'  pretrain_network_g: {weights}\n  param_key_g: params\n  strict_load_g: true\n\n'
        'val:\n  save_img: true\n  suffix: ~\n'
    )
    if plus:
        text += '  save_attention: false  # or DCM indices, e.g. [0, -1]: heat maps beside the SR images\n'
    text += metrics(scale, niqe=True)
    return text


def coco_test_sets(scale, plus):
    return [benchmark_data(f'test_{i + 1}', name, kind, scale, plus) for i, (name, kind) in enumerate(COCO_TEST_SETS)]


def all_files():
    files = {}
    # Table 1: PDN = RCAN+ on COCO (x2, x4) and on FFHQ (x8, x16).
    for scale in (2, 4):
        name = f'train_rcan_x{scale}'
        files[name] = train_file(
            name,
            f'Table 1: PDN (RCAN+) x{scale} on COCO with text prompts',
            'rcan',
            True,
            scale,
            coco_train_data(scale, True),
            benchmark_data('val', 'Set5', 'text', scale, True),
            COCO_SUBIMAGES,
            'COCO',
        )
        files[f'test_rcan_x{scale}'] = test_file(
            f'test_rcan_x{scale}',
            f'Table 1: PDN (RCAN+) x{scale} on Set5 / Set14 (captions) and Urban100 (image prompts)',
            'rcan',
            True,
            scale,
            coco_test_sets(scale, True),
            f'experiments/{name}/models/net_g_latest.pth',
        )
    for scale in (8, 16):
        name = f'train_rcan_x{scale}_ffhq'
        files[name] = train_file(
            name,
            f'Table 1: PDN (RCAN+) x{scale} on FFHQ with image prompts (flipped LR view)',
            'rcan',
            True,
            scale,
            face_train_data(scale, True),
            face_test_data('val', scale, True),
            FFHQ_IMAGES,
            'FFHQ',
        )
        files[f'test_rcan_x{scale}_celebahq'] = test_file(
            f'test_rcan_x{scale}_celebahq',
            f'Table 1: PDN (RCAN+) x{scale} on CelebA-HQ with image prompts',
            'rcan',
            True,
            scale,
            [face_test_data('test_1', scale, True)],
            f'experiments/{name}/models/net_g_latest.pth',
        )
    # Table 3: EDSR / RCAN / RDN and their "+" twins at x4 on COCO, from one recipe. train_rcan_x4 is RCAN+.
    for net in NETWORKS:
        for plus in (False, True):
            if net == 'rcan' and plus:
                continue
            name = f'train_{net}_x4' if plus else f'train_{net}_baseline_x4'
            label = NETWORKS[net][1 if plus else 0]
            files[name] = train_file(
                name,
                f'Table 3: {label} x4 on COCO (baseline and "+" share this recipe)',
                net,
                plus,
                4,
                coco_train_data(4, plus),
                benchmark_data('val', 'Set5', 'text', 4, plus),
                COCO_SUBIMAGES,
                'COCO',
            )
            test_name = name.replace('train_', 'test_')
            files[test_name] = test_file(
                test_name,
                f'Table 3: {label} x4 on Set5 / Set14 / Urban100',
                net,
                plus,
                4,
                coco_test_sets(4, plus),
                f'experiments/{name}/models/net_g_latest.pth',
            )
    # Table 4: EDSR+ ablations.
    for suffix, dcm, label in (
        ('no_dynamic', {'use_dynamic': False}, 'without the dynamic convolution (w/o dy)'),
        ('no_attention', {'use_attention': False}, 'without the attention (w/o att)'),
    ):
        name = f'train_edsr_x4_{suffix}'
        files[name] = train_file(
            name,
            f'Table 4: EDSR+ x4 {label}',
            'edsr',
            True,
            4,
            coco_train_data(4, True),
            benchmark_data('val', 'Set5', 'text', 4, True),
            COCO_SUBIMAGES,
            'COCO',
            dcm=dcm,
        )
    # Fine-tuning RCAN+ from a published BasicSR RCAN checkpoint (e.g. RCAN_BIX4 from BasicSR's model zoo).
    name = 'finetune_rcan_x4_from_basicsr'
    files[name] = train_file(
        name,
        'RCAN+ x4 fine-tuned from a published BasicSR RCAN x4 checkpoint (only the DCMs start from scratch)',
        'rcan',
        True,
        4,
        coco_train_data(4, True),
        benchmark_data('val', 'Set5', 'text', 4, True),
        COCO_SUBIMAGES,
        'COCO',
        pretrain='experiments/pretrained_models/RCAN_BIX4-official.pth',
    )
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
            tmp = path + '.tmp'
            with open(tmp, 'w', encoding='utf-8') as f:
                f.write(text)
            os.replace(tmp, path)
    if args.check and stale:
        print('out of date (run python scripts/make_option_files.py):\n  ' + '\n  '.join(stale), file=sys.stderr)
        return 1
    print(f'{len(stale)} option file(s) written' if not args.check else 'option files up to date')
    return 0


if __name__ == '__main__':
    sys.exit(main())
