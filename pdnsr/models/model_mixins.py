"""Small additions to basicsr's models that are not about prompts; PDNModel mixes them in.

Each overrides one public basicsr method and calls ``super()`` for the work itself.
"""

import datetime
import os
from collections import OrderedDict

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pdnsr.utils.files import write_text
from pdnsr.utils.markdown import markdown_table


class CpuFriendlyMixin:
    """basicsr models on a machine without CUDA: ``num_gpu > 0`` is one clear error, and DDP runs over gloo on CPU."""

    def __init__(self, opt):
        if opt.get('num_gpu', 0) and not torch.cuda.is_available():
            # basicsr would otherwise fail deep inside the first .to('cuda') with a torch error.
            raise ValueError(
                f'num_gpu: {opt["num_gpu"]} but this machine has no CUDA device; set num_gpu: 0 (CPU) or num_gpu: auto'
            )
        super().__init__(opt)

    def model_to_device(self, net):
        # basicsr wraps DDP with device_ids=[current CUDA device]; on CPU (gloo) DDP takes no device ids.
        if self.opt['dist'] and self.device.type == 'cpu':
            return DistributedDataParallel(
                net.to(self.device), find_unused_parameters=self.opt.get('find_unused_parameters', False)
            )
        return super().model_to_device(net)


class RankZeroValidationMixin:
    """Validation under DDP on rank 0 only, while the other ranks wait at a barrier that cannot time out.

    basicsr validates on rank 0 and lets the other ranks run on into the next step, whose gradient all-reduce then
    waits for the whole validation (NCCL's watchdog kills the job past its timeout); after the last iteration they
    leave altogether, and anything rank 0 still posts is never answered. Here every rank meets at a barrier of a
    gloo group created with a timeout of a week (its own group: the default one may be NCCL, with its watchdog),
    after rank 0 has validated (the model validates the bare network, so rank 0 posts no collective meanwhile).
    """

    VALIDATION_TIMEOUT = datetime.timedelta(days=7)

    def dist_validation(self, dataloader, current_iter, tb_logger, save_img):
        if getattr(self, '_validation_group', None) is None:
            self._validation_group = dist.new_group(backend='gloo', timeout=self.VALIDATION_TIMEOUT)
        try:
            if self.opt['rank'] == 0:
                self.nondist_validation(dataloader, current_iter, tb_logger, save_img)
        finally:  # a failing rank 0 still releases the others (torchrun then stops them all)
            dist.barrier(group=self._validation_group)


class DeferredLossLogMixin:
    """Losses stay on the device after each step; they are reduced (a host sync, and a collective under DDP) only
    when basicsr asks for the log, every ``logger.print_freq`` iterations on every rank."""

    def reduce_loss_dict(self, loss_dict):
        # SRModel.optimize_parameters calls this at every step to fill self.log_dict.
        return OrderedDict((name, value.detach()) for name, value in loss_dict.items())

    def get_current_log(self):
        return super().reduce_loss_dict(self.log_dict)


class MetricsTableMixin:
    """Testing (``pdnsr/test.py``) also writes ``results/<name>/metrics.md``: a row per test set, a column per
    metric, rewritten atomically after each set."""

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
        if not self.opt['is_train'] and self.opt['val'].get('metrics') is not None:
            if not hasattr(self, '_metric_rows'):
                self._metric_rows = {}
            self._metric_rows[dataloader.dataset.opt['name']] = dict(self.metric_results)  # averages by now
            write_metric_table(self._metric_rows, os.path.join(self.opt['path']['results_root'], 'metrics.md'))


def write_metric_table(rows, path):
    """``rows``: {dataset: {metric: value}} as a markdown table at ``path`` (a temporary name, then rename)."""
    metrics = list(next(iter(rows.values())))
    lines = [[name, *(f'{values[m]:.4f}' for m in metrics)] for name, values in rows.items()]
    write_text(path, markdown_table(['dataset', *metrics], lines) + '\n')
