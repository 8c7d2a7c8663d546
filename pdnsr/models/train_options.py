"""The ``train:`` options pdnsr adds to basicsr's training loop for speed, and the check of the whole section.

::

    train:
      amp: bf16            # bf16 | fp16 | false: autocast for forward and loss (fp16 with a GradScaler)
      channels_last: true  # network and inputs in channels-last memory format
      compile: true        # torch.compile of net_g for training; or {mode: max-autotune, dynamic: false}
      accumulate: 4        # each iteration's batch in 4 micro-batches: same result, 1/4 of the activation memory

All are off by default. ``accumulate: N`` keeps what an iteration is: ``batch_size_per_gpu`` is still the batch of
one optimiser step (the learning rate, the EMA, the scheduler and the DCM temperature all count optimiser steps), and
it is computed as N micro-batches of ``batch_size_per_gpu / N`` whose gradients add up to the whole batch's. So a
recipe gives the same training with any ``accumulate`` (up to float rounding) and only its memory changes.

``skip_nonfinite: N`` (default 0) decides what happens to a step whose loss or gradients are NaN or infinite: with 0
the training stops at the first one (:class:`NonFiniteGuard`, exit status 1), keeping the last checkpoint; with N up
to N such steps are skipped first, which costs a host sync per step on CUDA.
"""

import glob
import os
from dataclasses import dataclass

import torch

from pdnsr.errors import RunFailed

# basicsr's SRModel reads these train: keys; pdnsr adds the rest. Anything else is a typo or an option of another
# basicsr model: named in a warning (basicsr itself ignores unknown keys silently).
BASICSR_TRAIN_KEYS = ('ema_decay', 'optim_g', 'scheduler', 'total_iter', 'warmup_iter', 'pixel_opt', 'perceptual_opt')
PDNSR_TRAIN_KEYS = ('temperature', 'amp', 'channels_last', 'compile', 'accumulate', 'skip_nonfinite')
AMP_DTYPES = ('bf16', 'fp16')
COMPILE_KEYS = ('mode', 'dynamic', 'fullgraph', 'backend')
# torch.compile's documented modes, for a torch without torch._inductor.list_mode_options.
COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


def compile_modes():
    """The ``mode`` values this torch's ``torch.compile`` accepts (inductor's list, e.g. 'default', 'lite', ...)."""
    try:
        from torch._inductor import list_mode_options
    except ImportError:
        return COMPILE_MODES
    return tuple(list_mode_options())


def compile_backends(everything=True):
    """The ``backend`` names this torch's ``torch.compile`` accepts: all of them (the debugging ones such as 'eager'
    and 'aot_eager' included), or with ``everything=False`` the ones ``torch._dynamo.list_backends()`` lists."""
    import torch._dynamo

    return tuple(torch._dynamo.list_backends(exclude_tags=() if everything else ('debug', 'experimental')))


def check_compile_options(compile_opt):
    """Refuse a ``train.compile`` mapping that ``torch.compile`` would refuse only when the model is built (after
    basicsr made the run's folders): unknown keys, a mode or backend this torch lacks, non-boolean flags.

    Raises:
        ValueError: one line naming the key, the value and what is allowed.
    """
    unknown = sorted(set(compile_opt) - set(COMPILE_KEYS))
    if unknown:
        raise ValueError(f'train.compile: unknown option(s) {unknown}; valid: {list(COMPILE_KEYS)}')
    if 'mode' in compile_opt and compile_opt['mode'] is not None and compile_opt['mode'] not in compile_modes():
        raise ValueError(f'train.compile.mode: {compile_opt["mode"]!r} is not one of {", ".join(compile_modes())}')
    if 'backend' in compile_opt and compile_opt['backend'] not in compile_backends():
        raise ValueError(
            f'train.compile.backend: {compile_opt["backend"]!r} is not a torch.compile backend; use one of '
            f'{", ".join(compile_backends(False))}, or eager / aot_eager to debug'
        )
    for key, allowed in (('dynamic', (True, False, None)), ('fullgraph', (True, False))):
        if key in compile_opt and not any(compile_opt[key] is v for v in allowed):
            words = 'true, false or null' if None in allowed else 'true or false'
            raise ValueError(f'train.compile.{key} must be {words}, got {compile_opt[key]!r}')


@dataclass(frozen=True)
class SpeedOptions:
    """Parsed ``train.amp`` / ``channels_last`` / ``compile`` / ``accumulate`` (see the module docstring)."""

    amp: str = None  # None, 'bf16' or 'fp16'
    channels_last: bool = False
    compile: dict = None  # None: eager; else torch.compile keyword arguments
    accumulate: int = 1

    @classmethod
    def from_opt(cls, train_opt, batch_size=None):
        """Parse a ``train:`` section; ``batch_size`` (the training set's ``batch_size_per_gpu``) is checked against
        ``accumulate``.

        Raises:
            ValueError: one line naming the option, the value and what is allowed.
        """
        train_opt = train_opt or {}
        amp = train_opt.get('amp', False)
        if amp is False or amp is None:
            amp = None
        elif amp not in AMP_DTYPES:
            raise ValueError(f'train.amp: {amp!r} is not one of bf16, fp16, false')
        channels_last = train_opt.get('channels_last', False)
        if not isinstance(channels_last, bool):
            raise ValueError(f'train.channels_last must be true or false, got {channels_last!r}')
        compile_opt = train_opt.get('compile', False)
        if compile_opt is True:
            compile_opt = {}
        elif compile_opt is False or compile_opt is None:
            compile_opt = None
        elif isinstance(compile_opt, dict):
            check_compile_options(compile_opt)
            compile_opt = dict(compile_opt)
        else:
            raise ValueError(
                f'train.compile must be true, false or a mapping of torch.compile options, got {compile_opt!r}'
            )
        accumulate = train_opt.get('accumulate', 1)
        if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
            raise ValueError(f'train.accumulate must be a positive integer, got {accumulate!r}')
        if batch_size is not None and batch_size % accumulate:
            raise ValueError(
                f'train.accumulate: {accumulate} does not divide batch_size_per_gpu {batch_size}; the batch of an '
                f'iteration is split into {accumulate} equal micro-batches'
            )
        return cls(amp, channels_last, compile_opt, accumulate)

    def describe(self):
        """'bf16 autocast, channels_last, compiled, 4 micro-batches' (or 'float32, eager')."""
        parts = [f'{self.amp} autocast' if self.amp else 'float32']
        parts += ['channels_last'] if self.channels_last else []
        parts += [f'compiled {self.compile}' if self.compile is not None else 'eager']
        parts += [f'{self.accumulate} micro-batches per step'] if self.accumulate > 1 else []
        return ', '.join(parts)


def unknown_train_keys(train_opt):
    """The keys of a ``train:`` section that neither basicsr's SRModel nor pdnsr reads, sorted."""
    return sorted(set(train_opt or {}) - set(BASICSR_TRAIN_KEYS) - set(PDNSR_TRAIN_KEYS))


class TrainingDiverged(RunFailed):
    """A training's loss or gradients became NaN or infinite: the run stops (exit status 1), nothing more is saved."""


class NonFiniteGuard:
    """Stops a training at its first step with a non-finite loss or gradient, or skips up to ``allowed`` of them.

    On CUDA with ``allowed`` 0 nothing waits for the device: the first bad iteration is kept in a device tensor and
    read where the training loop synchronises anyway (the log every ``print_freq`` iterations, saving, validation),
    always before a checkpoint is written; the steps in between are wasted, never saved. On the CPU, or to skip
    steps, each step is checked as it ends.
    """

    def __init__(self, train_opt, device, models_dir):
        allowed = (train_opt or {}).get('skip_nonfinite', 0)
        if isinstance(allowed, bool) or not isinstance(allowed, int) or allowed < 0:
            raise ValueError(f'train.skip_nonfinite must be an integer >= 0, got {allowed!r}')
        self.allowed, self.skipped, self.models_dir = allowed, 0, models_dir
        self.each_step = allowed > 0 or torch.device(device).type != 'cuda'
        self.first_bad = torch.zeros((), dtype=torch.long, device=device)

    def step_is_finite(self, loss, grads, current_iter, warn):
        """Whether the step may be taken: ``loss`` (a detached scalar) and ``grads`` finite. Raises
        :class:`TrainingDiverged` past the allowed number of skipped steps."""
        finite = torch.isfinite(loss)
        if grads:
            finite = finite & torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()
        if not self.each_step:
            self.first_bad.masked_fill_(~finite & (self.first_bad == 0), current_iter)
            return True
        if bool(finite):
            return True
        self.skipped += 1
        if self.skipped > self.allowed:
            self._stop(current_iter)
        warn(f'iteration {current_iter}: the loss or a gradient is NaN or infinite; step skipped '
             f'({self.skipped} of train.skip_nonfinite: {self.allowed})')  # fmt: skip
        return False

    def check(self):
        """At a point where the device is waited for anyway: stop if an earlier step was not finite."""
        if not self.each_step and int(self.first_bad):
            self._stop(int(self.first_bad))

    def _stop(self, iteration):
        saved = sorted(glob.glob(os.path.join(self.models_dir, 'net_g_*.pth')), key=os.path.getmtime)
        kept = f'the last checkpoint, {saved[-1]}, is kept' if saved else 'no checkpoint was saved before it'
        raise TrainingDiverged(
            f'training stopped: the loss or a gradient became NaN or infinite at iteration {iteration}; {kept}. Lower '
            'the learning rate, or set train: skip_nonfinite: N to skip a few such steps'
        )
