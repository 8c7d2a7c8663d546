"""The one-line rule of user errors (pdnsr.errors.one_line), including errors raised inside DataLoader workers."""

import pytest
import torch

from pdnsr.errors import UserError, one_line, run_main


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


def test_a_failed_run_is_exit_1_with_its_log_tail_as_lines(tmp_path, capsys):
    from pdnsr.tools.experiments.runs import launch

    script = tmp_path / 'fails.py'
    script.write_text("print('loading data')\nprint('ValueError: no images in /data/hr')\nraise SystemExit(3)\n")
    result = launch({'name': 'broken'}, str(tmp_path), script=str(script))
    assert run_main(lambda: result.check('training broken'), 'pdnsr-demo') == 1
    err = capsys.readouterr().err
    assert err.startswith('pdnsr-demo: training broken failed (exit status 3, log ')
    assert err.endswith('last lines:\nloading data\nValueError: no images in /data/hr\n')


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from pdnsr.utils.files import write_text

    path = tmp_path / 'results.md'
    assert write_text(path, 'old\n') == path and path.read_text() == 'old\n'
    with pytest.raises(TypeError):
        write_text(path, None)  # fails inside the write
    assert path.read_text() == 'old\n' and sorted(p.name for p in tmp_path.iterdir()) == ['results.md']


def test_a_folder_filled_once_is_reused_whole_or_made_again(tmp_path):
    from pdnsr.utils.files import fill_once

    folder, calls = tmp_path / 'data', []

    def fill(fail=False):
        calls.append(fail)
        (folder / f'part{len(calls)}.png').write_bytes(b'x')
        if fail:
            raise KeyboardInterrupt  # interrupted half way

    with pytest.raises(KeyboardInterrupt):
        fill_once(folder, lambda: fill(fail=True))
    assert not (folder / 'done.json').exists()
    fill_once(folder, fill)  # the interrupted call's file is gone, not kept beside the new ones
    assert sorted(p.name for p in folder.iterdir()) == ['done.json', 'part2.png']
    fill_once(folder, fill)  # finished: not filled again
    assert calls == [True, False]
