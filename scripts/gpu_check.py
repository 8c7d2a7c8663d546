"""Check a GPU machine in one command: training, mixed precision, compile, tiled fp16 inference, torchrun, benchmarks.

    .venv/bin/python scripts/gpu_check.py                      # on the first CUDA device; about 7 minutes (estimated)
    .venv/bin/python scripts/gpu_check.py --device cpu --quick # the same steps on the CPU (what CI runs)

On a small real dataset (scikit-image's photos, an image prompt store from the random-weight CLIP) it runs:

1. ``pdnsr/train.py`` of EDSR+ and RCAN+ in float32, bf16 and fp16 autocast, bf16 + channels_last and compiled
   bf16 + channels_last, and EDSR+ compiled fp16 (``train:`` options of pdnsr.models.train_options), each with a
   validation at the end; ms / iteration is timed between the first and the last logged iteration, so compiling
   (in the first) is left out, and the report gives EDSR+'s bf16 + channels_last ÷ float32 against the ≤ 0.6
   target of CUDA. On CUDA those two runs train alone, one after the other, for honest times; the others two at a
   time. (A compiled float32 run would add a minute or two of compiling and break the 8-minute budget.)
2. ``pdnsr-infer`` of the EDSR+ float32 model, whole and tiled with ``--fp16`` (on the CPU: float32 tiles), and
   the PSNR between the two;
3. ``torchrun --nproc_per_node=<GPUs>`` (NCCL; on one GPU too: process group, DDP wrapper, distributed
   validation; gloo with 2 processes on the CPU) with validation during and after training, the settings of the
   shipped recipes (ema_decay 0);
4. ``benchmarks/bench_networks.py`` and ``benchmarks/bench_dcm.py`` on the device.

It writes one markdown report (``--report``, default ``gpu_check.md``) that names the device, and exits 1 if any
step failed.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import _checkout  # noqa: F401  (this checkout's pdnsr, basicsr patched)

# isort: split

import cv2  # noqa: E402
import torch  # noqa: E402
from basicsr.metrics import calculate_psnr  # noqa: E402

from pdnsr import options as opts  # noqa: E402
from pdnsr.prompts.encoder import PromptEncoder  # noqa: E402
from pdnsr.tools.experiments.runs import launch, progress_of, train_all, validation_results, weights_path  # noqa: E402
from pdnsr.tools.sample_data import sample_dataset  # noqa: E402
from pdnsr.utils.files import write_text  # noqa: E402
from pdnsr.utils.markdown import markdown_table  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETWORKS = {'EDSRPlus': dict(num_feat=64, num_block=8), 'RCANPlus': dict(num_group=2, num_block=8, num_feat=64)}
TINY = {'EDSRPlus': dict(num_feat=16, num_block=1), 'RCANPlus': dict(num_group=1, num_block=2, num_feat=16)}
SPEEDS = {
    'fp32': {},
    'bf16': dict(amp='bf16'),
    'fp16': dict(amp='fp16'),
    'bf16+cl': dict(amp='bf16', channels_last=True),
    'bf16+cl+compile': dict(amp='bf16', channels_last=True, compile=True),
    'fp16+compile': dict(amp='fp16', compile=True),
}
# The pair of the CUDA target: bf16 + channels_last ÷ float32 step time of EDSR+ <= 0.6.
TIMED = ('EDSRPlus_fp32', 'EDSRPlus_bf16+cl')
BF16_CL_TARGET = 0.6


def wanted(net, label, quick):
    """Which runs the check makes: every option on EDSR+ and RCAN+ but RCAN+ fp16 + compile; with --quick (the CPU in
    CI) the timed pair on EDSR+ and RCAN+ in bf16 + channels_last only: compiling takes a minute on a CPU, and the
    tests train compiled, fp16 and bf16 runs on the CPU themselves (tests/test_training_options.py)."""
    if quick:
        return label == 'bf16+cl' or (net, label) == ('EDSRPlus', 'fp32')
    return not (net == 'RCANPlus' and label == 'fp16+compile')


def run_options(name, net_type, data, args, speed):
    network_g = opts.network(net_type, 2, **(TINY if args.quick else NETWORKS)[net_type])
    train_set = opts.train_dataset('check', data[0], data[1], 64 if not args.quick else 32, args.batch, data[2], True)
    train_set['dataset_enlarge_ratio'] = 100
    val = {'val': opts.dataset('checkval', data[0], data[1], data[2], prompted=True)}
    gpus = torch.cuda.device_count() if args.device == 'cuda' else 0
    opt = opts.train_options(name, network_g, train_set, 2, args.iters, 2e-4, val_sets=val, num_gpu=min(gpus, 1),
                             print_freq=max(1, args.iters // 4))  # fmt: skip
    opt['train'].update(speed)
    return opt


def summary(log_path):
    """(seconds per iteration after warm-up, last loss), validation PSNR, from a basicsr training log.

    The time is that of the iterations between the first and the last logged one, from the log lines' timestamps:
    the first logged iteration (compiling, cuDNN's autotuning, the first allocations) is not part of it, unlike
    basicsr's own ``time`` (an average since the start). None without two logged iterations.
    """
    with open(log_path, encoding='utf-8') as f:
        text = f.read()
    steps = [(p['time'], p['iter'], p['l_pix']) for p in map(progress_of, text.splitlines()) if p and 'l_pix' in p]
    psnr = validation_results(text)
    step = (steps[-1][0] - steps[0][0]) / (steps[-1][1] - steps[0][1]) if len(steps) > 1 else None
    return (step, steps[-1][2] if steps else None), (psnr[-1][1] if psnr else None)


def check_training(root, data, args, report):
    report.append('## 1. Training: `pdnsr/train.py`, each speed option\n')
    opts_by_name = {
        f'{net}_{label}': run_options(f'{net}_{label}', net, data, args, speed)
        for net in NETWORKS
        for label, speed in SPEEDS.items()
        if wanted(net, label, args.quick)
    }
    rows, failed, seconds, steps = [], [], {}, {}
    # On CUDA the timed pair trains alone (two runs on one GPU slow each other); on the CPU one thread each, two at
    # a time on two or more cores, so all go together.
    alone = [name for name in TIMED if args.device == 'cuda']
    for batch, jobs in (
        ([opts_by_name[n] for n in alone], 1),
        ([o for n, o in opts_by_name.items() if n not in alone], 2),
    ):
        try:
            train_all(batch, root, jobs=jobs, on_done=lambda name, s: seconds.__setitem__(name, s))
        except Exception as err:  # noqa: BLE001  (the report says which runs failed; the others are still reported)
            failed.append(str(err).splitlines()[0])
    for name in opts_by_name:
        (step, loss), psnr = summary(os.path.join(root, f'{name}_train.log'))
        steps[name] = step
        ok = os.path.exists(weights_path(root, name)) and loss is not None and loss == loss  # not NaN
        rows.append([name, 'ok' if ok else 'FAILED', f'{seconds.get(name, 0):.0f}', step and f'{step * 1e3:.0f}',
                     loss and f'{loss:.4f}', psnr and f'{psnr:.2f}'])  # fmt: skip
        failed += [] if ok else [name]
    first = max(1, args.iters // 4)  # the first logged iteration (print_freq)
    heads = ['run', 'status', 'wall s', f'ms / iteration {first}–{args.iters} (after warm-up)', 'last loss', 'val PSNR']
    report.append(markdown_table(heads, rows) + '\n')
    report.append(ratios(steps, args))
    return failed


def ratios(steps, args):
    """The report's lines on EDSR+'s step-time ratios: bf16 + channels_last ÷ float32 (target <= 0.6 on CUDA) and
    compiled ÷ eager bf16 + channels_last (<= 1.0)."""
    lines = []
    for what, (a, b), target in (
        ('bf16 + channels_last ÷ float32', TIMED[::-1], BF16_CL_TARGET if args.device == 'cuda' else None),
        ('compiled bf16 + channels_last ÷ eager bf16 + channels_last', ('EDSRPlus_bf16+cl+compile', TIMED[1]), 1.0),
    ):
        if not (steps.get(a) and steps.get(b)):
            why = 'a run failed' if not args.quick or a in steps else '--quick makes no compiled run'
            lines.append(f'- EDSR+ {what}: not measured ({why})')
            continue
        ratio = steps[a] / steps[b]
        if args.quick:
            verdict = '--quick: a smoke run of a tiny network, not a measurement'
        elif target is None:
            verdict = f'the ≤ {BF16_CL_TARGET} target is for CUDA; not judged on the CPU'
        else:
            verdict = f'target ≤ {target}: {"met" if ratio <= target else "**missed**"}'
        lines.append(f'- EDSR+ {what} (ms / iteration after warm-up): **{ratio:.2f}**; {verdict}')
    return '\n'.join(lines) + '\n'


def check_inference(root, data, args, report):
    report.append('## 2. Inference: `pdnsr-infer`, whole and tiled fp16\n')
    opt_path = os.path.join(root, 'EDSRPlus_fp32_train.yml')
    out = {}
    tiled = ['--tile', '16', '--tile-pad', '8'] + (['--fp16'] if args.device == 'cuda' else [])
    for label, extra in (('whole', []), ('tiled', tiled)):
        command = [sys.executable, os.path.join(REPO_ROOT, 'scripts', 'inference_pdnsr.py'), '--opt', opt_path,
                   '--weights', weights_path(root, 'EDSRPlus_fp32'), '--input', data[1], '--output',
                   os.path.join(root, f'infer_{label}'), '--prompt-image', 'self', '--device', args.device]  # fmt: skip
        command += extra
        proc = subprocess.run(command, capture_output=True, text=True)
        out[label] = proc.returncode
        if proc.returncode:
            report.append(f'`{label}` FAILED (exit {proc.returncode}): `{proc.stderr.strip().splitlines()[-1]}`\n')
    if any(out.values()):
        return ['inference']
    names = sorted(os.listdir(os.path.join(root, 'infer_whole')))
    read = lambda label, name: cv2.imread(os.path.join(root, f'infer_{label}', name))  # noqa: E731
    psnrs = [calculate_psnr(read('whole', n), read('tiled', n), 0) for n in names]
    precision = 'fp16 autocast' if args.device == 'cuda' else 'float32 (fp16 inference is CUDA only)'
    report.append(f'{len(names)} images; tiled ({precision}, tile 16, pad 8) against whole float32: PSNR '
                  f'{min(psnrs):.1f}–{max(psnrs):.1f} dB\n')  # fmt: skip
    return []


def check_torchrun(root, data, args, report):
    # Always under torchrun, one GPU included: the process group (NCCL), the DDP wrapper and the distributed
    # validation are what this step checks.
    nproc = max(1, torch.cuda.device_count()) if args.device == 'cuda' else 2
    report.append(f'## 3. `torchrun --nproc_per_node={nproc}` ({"NCCL" if args.device == "cuda" else "gloo"}), '
                  'validation during and after training, ema_decay 0\n')  # fmt: skip
    opt = run_options('ddp', 'EDSRPlus', data, args, {})
    opt['val'].update(val_freq=max(1, args.iters // 2), save_attention=[0, -1], save_img=True)
    if args.device == 'cuda':
        opt['num_gpu'] = nproc
    result = launch(opt, root, 'train', nproc=nproc, port=29650, timeout=600, launcher='torchrun')
    with open(result.log_path, encoding='utf-8') as f:
        text = f.read()
    validations = text.count('Validation checkval')
    world = re.search(r'^\s*world_size: (\d+)$', text, re.M)
    distributed = re.search(r'^\s*dist: True$', text, re.M) is not None and world and int(world[1]) == nproc
    how = 'distributed' if distributed else 'NOT distributed'
    report.append(f'exit {result.returncode} in {result.seconds:.0f} s, {validations} validations, {how} '
                  f'(world_size {world and world[1]})\n')  # fmt: skip
    return [] if result.returncode == 0 and validations >= 2 and distributed else ['torchrun']


def check_benchmarks(args, report):
    report.append('## 4. Benchmarks on the device\n')
    failed = []
    for script in ('bench_networks.py', 'bench_dcm.py'):
        command = [sys.executable, os.path.join(REPO_ROOT, 'benchmarks', script), '--device', args.device]
        command += ['--quick'] if args.quick else ['--reps', '3']
        proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
        report.append(
            proc.stdout if proc.returncode == 0 else f'`{script}` FAILED:\n\n```\n{proc.stderr[-2000:]}\n```\n'
        )
        failed += [script] if proc.returncode else []
    return failed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', choices=('cuda', 'cpu'), default='cuda')
    parser.add_argument('--quick', action='store_true', help='tiny networks and a few iterations (CI on the CPU)')
    parser.add_argument('--report', default='gpu_check.md', help='markdown report (default gpu_check.md)')
    parser.add_argument('--workdir', default=None, help='where runs go (default a temporary folder)')
    args = parser.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        print('gpu_check.py: error: --device cuda: no CUDA device here; use --device cpu', file=sys.stderr)
        return 2
    args.iters, args.batch = (4, 2) if args.quick else (200, 16)
    start = time.time()
    device = torch.cuda.get_device_name(0) if args.device == 'cuda' else f'CPU ({os.cpu_count()} cores)'
    command = ' '.join(['scripts/gpu_check.py', *(argv or sys.argv[1:])])
    report = [f'# pdnsr GPU check: {device}\n', f'torch {torch.__version__}, CUDA {torch.version.cuda}, '
              f'{time.strftime("%Y-%m-%d %H:%M")}, `{command}`\n']  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or tmp
        os.makedirs(root, exist_ok=True)
        encoder = PromptEncoder('ViT-B-32', pretrained='none', device=args.device)
        data = sample_dataset(os.path.join(root, 'data'), encoder, scale=2, crop=128 if not args.quick else 64)
        del encoder
        failed = check_training(root, data, args, report)
        failed += check_inference(root, data, args, report) if 'EDSRPlus_fp32' not in failed else ['inference']
        failed += check_torchrun(root, data, args, report)
        failed += check_benchmarks(args, report)
    report.append(
        f'\n**{"FAILED: " + ", ".join(failed) if failed else "all steps passed"}** in {time.time() - start:.0f} s.\n'
    )
    write_text(args.report, '\n'.join(report))
    print('\n'.join(report))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
