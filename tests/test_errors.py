"""The one-line rule of user errors (pdnsr.errors.one_line), including errors raised inside DataLoader workers."""

import pytest
import torch

from pdnsr.cli import run_main
from pdnsr.errors import UserError, one_line


class _BadItem(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise ValueError(f'Prompt store /data/p.lmdb: value of key {index!r} has 7 bytes, not a multiple of 2048')


def test_an_error_in_a_dataloader_worker_is_its_own_message():
    loader = torch.utils.data.DataLoader(_BadItem(), num_workers=1)
    with pytest.raises(ValueError) as caught:
        next(iter(loader))
    assert 'Traceback' in str(caught.value)  # what torch re-raises: the worker's whole traceback as the message
    assert one_line(caught.value) == (
        'Prompt store /data/p.lmdb: value of key 0 has 7 bytes, not a multiple of 2048 (in DataLoader worker process 0)'
    )


def test_run_main_prints_one_line_and_returns_2(capsys):
    def fail():
        raise UserError('--tile must be\n  positive')

    assert run_main(fail, 'pdnsr-infer') == 2
    assert (
        capsys.readouterr().err == 'pdnsr-infer: error: --tile must be positive (PDNSR_DEBUG=1 shows the traceback)\n'
    )
    assert one_line(KeyError('key x is missing')) == 'key x is missing'
