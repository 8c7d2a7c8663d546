"""Where outputs (experiments/, results/, tb_logger/) go, and the lock that keeps one run per output folder."""

import contextlib
import os

_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def root_path():
    """``$PDNSR_ROOT`` when set; else the checkout's root when pdnsr runs from one (setup.py beside pdnsr/); else
    the working directory (pdnsr installed from a wheel)."""
    if os.environ.get('PDNSR_ROOT'):
        return os.path.abspath(os.environ['PDNSR_ROOT'])
    if os.path.isfile(os.path.join(_CHECKOUT, 'setup.py')):
        return _CHECKOUT
    return os.getcwd()


@contextlib.contextmanager
def run_lock(opt):
    """Hold the lock of a run's folder (``experiments/<name>``, or ``results/<name>`` for a test) while the block runs.

    The lock is ``<folder>.lock`` beside the folder (basicsr renames the folder itself to ``_archived_...``), held
    with ``flock`` and removed when the run ends; the system releases it when the process dies, so a crashed run
    never leaves a stale lock (its file stays, unlocked) and ``--auto_resume`` takes it as usual. Under torchrun
    only rank 0 takes it (the only rank that makes or renames folders). Where ``flock`` does not exist (Windows)
    nothing is locked.

    Raises:
        UserError: another process holds the lock; the message names it.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    from pdnsr.errors import UserError

    if opt.get('rank', 0) != 0:
        yield
        return
    kind = 'experiments' if opt['is_train'] else 'results'
    folder = os.path.join(root_path(), kind, str(opt['name']))
    path = f'{folder}.lock'
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        f = open(path, 'a+')
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or 'another process'
            f.close()
            raise UserError(
                f'{kind}/{opt["name"]} is in use by {holder} (lock {path}); wait for that run to end, or give this '
                'one another name: (name: in the option file)'
            ) from None
        try:  # the file locked is still the one at the path (not one a finishing run just removed)
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    try:
        f.seek(0)
        f.truncate()
        f.write(f'process {os.getpid()}\n')
        f.flush()
        yield
    finally:
        os.remove(path)  # before the lock goes: a run that opens it later makes a new one
        f.close()
