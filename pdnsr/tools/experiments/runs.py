"""Training and testing runs in subprocesses: the one launcher of the demo, the experiments, the benchmarks and the
tests.

A run is basicsr's own pipeline, ``pdnsr/train.py`` or ``pdnsr/test.py`` (or another script that calls it), on an
option dict written to ``<root>/<name>_<script>.yml``, with ``PDNSR_ROOT=<root>`` so that ``experiments/``,
``results/`` and ``tb_logger/`` land there. ``nproc > 1`` (or ``launcher='torchrun'``, even for one process) starts it
under ``torchrun`` (gloo on CPU, NCCL on CUDA).
Small convolutions scale poorly across threads, so on a few cores several single-threaded runs at once
(:func:`train_all`) finish sooner than the same runs one after another with all threads.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pdnsr.errors import RunFailed

PDNSR_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # pdnsr/
# A progress line of basicsr's training log (MessageLogger), console and log file alike: '2026-01-01 12:00:00,123
# INFO: [demo_..][epoch:  0, iter:      50, lr:(1.000e-03,)] [eta: 0:01:02, time (data): 0.100 (0.010)] l_pix:
# 1.2345e-02 temperature: 3.4000e+01'
_PROGRESS = re.compile(
    r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO: \[[^\]]*\]\[epoch:.*?iter:\s*([\d,]+), lr:\(.*?\)\] '
    r'(?:\[eta: ([^,\]]+).*?\] )?(.*)$'
)


@dataclass
class RunResult:
    """What a finished run left: exit status, the last lines of its output, seconds, and the log file."""

    returncode: int
    tail: str
    seconds: float
    log_path: str

    def check(self, what):
        """Raise :class:`RunFailed` naming ``what`` and the log's tail unless the run exited with 0."""
        if self.returncode != 0:
            raise RunFailed(
                f'{what} failed (exit status {self.returncode}, log {self.log_path}); last lines:\n{self.tail}'
            )
        return self


def hashed_name(prefix, opt):
    """``<prefix>_<8 hex digits>``: a run name that changes with anything in the option dict ``opt`` (data paths,
    recipe, network), so that a run kept in a work folder is reused only for the very same recipe."""
    blob = json.dumps({k: v for k, v in opt.items() if k != 'name'}, sort_keys=True, default=str)
    return f'{prefix}_{hashlib.sha1(blob.encode()).hexdigest()[:8]}'


def progress_of(line):
    """The fields of one of basicsr's training progress lines, or None for any other line: ``time`` (seconds since
    the epoch, from the line's local timestamp), ``iter`` (int), ``eta`` (str, as basicsr prints it, or None) and one
    float per logged value (``l_pix``, ``temperature``, ...; NaN as ``nan``)."""
    match = _PROGRESS.match(line)
    if match is None:
        return None
    stamp, ms, it, eta, values = match.groups()
    seconds = time.mktime(time.strptime(stamp, '%Y-%m-%d %H:%M:%S')) + int(ms) / 1e3
    fields = {key: float(value) for key, value in re.findall(r'(\w+): (\S+)', values)}
    return dict(fields, time=seconds, iter=int(it.replace(',', '')), eta=eta)


def validation_results(log, metric='psnr'):
    """``[(set name, value)]`` of one metric in basicsr's validation log lines, in order: a ``Validation <set>``
    line, then a line per metric (``\t # psnr: 30.1234\tBest: 30.1234 @ 100 iter``; ``inf`` / ``nan`` read too)."""
    results, current = [], None
    for line in log.splitlines():
        if 'Validation ' in line:
            current = line.rsplit('Validation ', 1)[1].strip()
        elif current is not None and (match := re.search(rf'# {re.escape(metric)}: (\S+)', line)):
            results.append((current, float(match.group(1))))
    return results


def weights_path(root, name, which='latest'):
    """``<root>/experiments/<name>/models/net_g_<which>.pth``: where basicsr saves a run's weights."""
    return os.path.join(root, 'experiments', name, 'models', f'net_g_{which}.pth')


def run_command(opt, root, script='train', args=(), nproc=1, port=29500, threads=1, env=None, launcher=None):
    """What :func:`launch` runs: writes ``opt`` to ``<root>/<name>_<script>.yml`` and returns ``(argv, environment,
    log path)``."""
    from pdnsr.options import write_options

    if launcher not in (None, 'torchrun'):
        raise ValueError(f"launch: launcher must be None or 'torchrun', got {launcher!r}")
    label = script if script in ('train', 'test') else os.path.splitext(os.path.basename(script))[0]
    path = write_options(opt, os.path.join(root, f'{opt["name"]}_{label}.yml'))
    script_path = os.path.join(PDNSR_DIR, f'{script}.py') if script in ('train', 'test') else script
    command = [sys.executable, script_path, '-opt', path, *args]
    if nproc > 1 or launcher == 'torchrun':
        command = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}',
                   f'--master_port={port}', *command[1:], '--launcher', 'pytorch']  # fmt: skip
    environ = dict(os.environ, PDNSR_ROOT=str(root), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    environ.update(PYTHONUNBUFFERED='1', **(env or {}))
    return command, environ, os.path.join(root, f'{opt["name"]}_{label}.log')


def launch(
    opt,
    root,
    script='train',
    args=(),
    nproc=1,
    port=29500,
    threads=1,
    timeout=None,
    on_line=None,
    env=None,
    kill_when=None,
    launcher=None,
):
    """Run ``script`` on the option dict ``opt`` in a subprocess and wait for it.

    Args:
        opt (dict): basicsr options; written (atomically) to ``<root>/<name>_<script>.yml``.
        root (str): ``PDNSR_ROOT`` of the run, and its working directory.
        script (str): 'train', 'test' (``pdnsr/<script>.py``) or the path of another script.
        args (tuple): more arguments after ``-opt FILE`` (e.g. ``--auto_resume``).
        nproc (int): processes; > 1 runs ``torchrun --nproc_per_node=nproc ... --launcher pytorch``.
        launcher (str | None): 'torchrun' runs under torchrun for any ``nproc``, 1 included (a distributed run on
            one device: process group, DDP wrapper, the distributed validation); None: torchrun only when nproc > 1.
        port (int): torchrun's master port (give each concurrent multi-process run its own).
        threads (int): OMP / MKL threads of each process.
        timeout (float | None): seconds before the run is killed (its result then has return code -9).
        on_line (callable | None): called with each output line (str, without newline) as it comes.
        env (dict | None): more environment variables.
        kill_when (callable | None): ``kill_when(line)`` true kills the run at once (SIGKILL: a crash, for tests of
            what a crash leaves behind).

    Returns:
        RunResult: the log (stdout and stderr together) is kept at ``<root>/<name>_<script>.log``.
    """
    command, environ, log_path = run_command(opt, root, script, args, nproc, port, threads, env, launcher)
    tail = deque(maxlen=40)
    start = time.time()
    with open(log_path, 'w', encoding='utf-8', buffering=1) as log:  # line-buffered: readable while it runs
        proc = subprocess.Popen(
            command, cwd=root, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        try:
            for line in proc.stdout:
                log.write(line)
                tail.append(line.rstrip())
                if on_line is not None:
                    on_line(line.rstrip())
                if kill_when is not None and kill_when(line):
                    proc.kill()
            proc.wait()
        finally:
            if timer:
                timer.cancel()
            if proc.poll() is None:
                proc.kill()
    return RunResult(proc.returncode, '\n'.join(tail), time.time() - start, log_path)


def train_all(opts, root, jobs=2, reuse=False, on_line=None, on_done=None, script='train', env=None):
    """Train every option dict of ``opts`` with ``pdnsr/train.py`` (or ``script``), ``jobs`` at once, one thread each.

    Args:
        opts (list[dict]): option dicts with distinct names.
        root (str): ``PDNSR_ROOT`` of every run.
        jobs (int): runs at once.
        reuse (bool): a run whose final weights exist is not trained again (the caller keys names on the recipe).
        on_line (callable | None): ``on_line(name, line)`` for each output line.
        on_done (callable | None): ``on_done(name, seconds)`` when a run finishes (seconds None when reused).
        script (str): ``'train'`` or the path of another script that runs basicsr's training pipeline.
        env (dict | None): more environment variables of every run.

    Returns:
        dict[str, str]: name -> final weights path. Raises :class:`RunFailed` (the first failure) after all finish.
    """

    def one(opt):
        name = opt['name']
        if reuse and os.path.exists(weights_path(root, name)):
            seconds = None
        else:
            lines = None if on_line is None else (lambda line: on_line(name, line))
            seconds = launch(opt, root, script, on_line=lines, env=env).check(f'training {name}').seconds
        if on_done is not None:
            on_done(name, seconds)
        return weights_path(root, name)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {opt['name']: pool.submit(one, opt) for opt in opts}
        return {name: future.result() for name, future in futures.items()}
