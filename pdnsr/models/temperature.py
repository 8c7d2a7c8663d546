"""The router temperature schedule of the paper: T = 34 at the start, minus 3 every 10 epochs, never below 1."""

import math
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class TemperatureSchedule:
    """Piecewise-constant temperature per epoch (0-based): ``max(min, init - step * (epoch // every_epochs))``.

    Built from the ``train.temperature`` option: ``{init: 34, step: 3, every_epochs: 10, min: 1}`` (the paper's
    values are the defaults; any key may be left out).
    """

    init: float = 34.0
    step: float = 3.0
    every_epochs: int = 10
    min: float = 1.0

    @classmethod
    def from_opt(cls, opt):
        opt = dict(opt or {})
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(opt) - valid)
        if unknown:
            raise ValueError(f'train.temperature: unknown option(s) {unknown}; valid: {sorted(valid)}')
        schedule = cls(**opt)
        if schedule.min <= 0 or schedule.init < schedule.min or schedule.step < 0:
            raise ValueError(f'train.temperature: need init >= min > 0 and step >= 0, got {opt}')
        if not isinstance(schedule.every_epochs, int) or schedule.every_epochs < 1:
            raise ValueError(
                f'train.temperature.every_epochs must be a positive integer, got {schedule.every_epochs!r}'
            )
        return schedule

    def at_epoch(self, epoch):
        return max(self.min, self.init - self.step * (epoch // self.every_epochs))


def iters_per_epoch(num_images, enlarge_ratio, batch_size_per_gpu, world_size):
    """Iterations per epoch, computed exactly as basicsr's training loop does."""
    return math.ceil(num_images * enlarge_ratio / (batch_size_per_gpu * world_size))


def epoch_of_iter(current_iter, num_iter_per_epoch):
    """0-based epoch of a 1-based iteration. Derived from the iteration, so a resumed run follows the same schedule
    as an uninterrupted one (basicsr restarts its own epoch counter's data pass on resume)."""
    return (current_iter - 1) // num_iter_per_epoch
