"""Files that exist only when complete: written under a temporary name beside the target, then renamed; folders
that count only when finished (:func:`fill_once`).

``os.replace`` is atomic within one file system, so a reader (or a rerun that reuses what it finds) never sees a
half-written file, and a write that fails leaves nothing behind. The temporary name starts with :data:`TMP_PREFIX`:
a dot, so folder listings skip it, and a prefix by which an interrupted run's leftovers are found and removed.
"""

import contextlib
import errno
import os
import shutil

TMP_PREFIX = '.tmp-'
DISK_FULL_BYTES = 1 << 20  # a write that fails with less free space than this failed for want of space


@contextlib.contextmanager
def written_atomically(path):
    """Yield a temporary name beside ``path`` (``<folder>/.tmp-<name>.<pid>``) to write to; it becomes ``path`` when
    the block succeeds and is removed when it fails or is interrupted; a write that fails on a full disk raises
    ``OSError(ENOSPC)`` naming ``path`` (:func:`pdnsr.errors.one_line` says "no space left")."""
    folder, name = os.path.split(os.fspath(path))
    tmp = os.path.join(folder, f'{TMP_PREFIX}{name}.{os.getpid()}')
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as err:
        # A full disk reaches here as ENOSPC, or as a writer's own error (torch.save: "unexpected pos ..."): both say
        # so, with the file that was being written.
        full = isinstance(err, OSError) and err.errno == errno.ENOSPC
        if full or shutil.disk_usage(folder or '.').free < DISK_FULL_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path)) from err
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with written_atomically(path) as tmp, open(tmp, 'w', encoding='utf-8') as f:
        f.write(text)
    return path


def fill_once(folder, fill, marker='done.json'):
    """Run ``fill()`` to fill ``folder`` unless an earlier call finished it (``marker``, written last); what an
    interrupted call left there is removed first, so a folder is reused whole or made again, never half."""
    if not os.path.exists(os.path.join(folder, marker)):
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        fill()
        write_text(os.path.join(folder, marker), '{}\n')
    return folder
