"""Small additions to basicsr's models that are not about prompts; PDNModel mixes them in.

Each overrides one public basicsr method and calls ``super()`` for the work itself.
"""

import os
from collections import OrderedDict

import torch
from torch.nn.parallel import DistributedDataParallel


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
    lines = ['| dataset | ' + ' | '.join(metrics) + ' |', '|---' * (len(metrics) + 1) + '|']
    lines += [f'| {name} | ' + ' | '.join(f'{values[m]:.4f}' for m in metrics) + ' |' for name, values in rows.items()]
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines) + '\n')
    os.replace(tmp, path)
