"""Run by test_training.py under torchrun: basicsr's training pipeline with a PDNModel that also writes each
rank's final weights, so the test can check that the ranks agree."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pdnsr  # noqa: E402,F401  (first: makes basicsr importable)

# isort: split
import torch  # noqa: E402
from basicsr.train import train_pipeline  # noqa: E402
from basicsr.utils.registry import MODEL_REGISTRY  # noqa: E402

from pdnsr.models import PDNModel  # noqa: E402


@MODEL_REGISTRY.register()
class WeightDumpingPDNModel(PDNModel):
    def save(self, epoch, current_iter):
        super().save(epoch, current_iter)
        path = os.path.join(os.environ['DUMP_DIR'], f'weights_rank{self.opt["rank"]}.pth')
        torch.save(self.get_bare_model(self.net_g).state_dict(), path)


if __name__ == '__main__':
    train_pipeline(os.environ['PDNSR_ROOT'])
