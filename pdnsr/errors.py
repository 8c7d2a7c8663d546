"""The errors a user can fix and the exit statuses of every command, below every other module of pdnsr (it imports
nothing of pdnsr).

Library code raises (these, or ``ValueError`` / ``KeyError`` / ``OSError``); a command line hands its body to
:func:`run_main`, which turns each user error into one line on stderr and exit status 2, and a failed run into 1.
"""

import errno
import os
import sys


class UserError(Exception):
    """A problem the user can fix, for code that has no better built-in type: reported as one line, exit 2."""


class RunFailed(UserError):
    """A run ended without its result (a training subprocess failed, a training diverged): exit status 1; the
    message may end with the run's log tail (printed as lines, not folded into one)."""


# Raised by pdnsr and basicsr for bad options, paths (OSError: missing, existing or unwritable), prompt stores and
# registry names (basicsr's registry raises KeyError).
USER_ERRORS = (UserError, ValueError, KeyError, OSError)


def one_line(err):
    """The message of ``err`` on one line (a KeyError's message without the quotes ``str`` adds).

    An error raised in a DataLoader worker reaches the main process with the worker's whole traceback as its
    message (``Caught ValueError in DataLoader worker process 0. Original Traceback ...``): its own last line is
    the message, and the worker is named after it. A full disk (``ENOSPC``) says so with the file it was writing.
    """
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f' while writing {err.filename}' if err.filename else ''
        return f'no space left on the device{where}; free some space (or write elsewhere) and run again'
    message = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
    if message.startswith('Caught ') and 'Original Traceback' in message:
        where = message.split('.', 1)[0].split(' in ', 1)[-1]
        last = message.rstrip().splitlines()[-1]
        message = f'{last.split(": ", 1)[-1]} (in {where})'
    return ' '.join(message.split()) or type(err).__name__


def run_main(fn, prog):
    """Call ``fn()`` with stdout line-buffered and return the process exit status; never raises for a user error.

    ``sys.exit(run_main(body, 'pdnsr-infer'))``: a user error (:data:`USER_ERRORS`) becomes one line ``prog:
    error: message`` on stderr and exit status 2, the status argparse uses for usage errors (whose own
    ``SystemExit`` is passed through as a status); a :class:`RunFailed` is exit status 1; Ctrl-C is 130; anything
    else is a bug and keeps its traceback. ``PDNSR_DEBUG=1`` re-raises user errors too.

    Args:
        fn (callable): the entry point's body; returns an exit status (None means 0).
        prog (str): the command name that starts the error line.
    """
    if hasattr(sys.stdout, 'reconfigure'):  # progress lines as they come, also through a pipe or from threads
        sys.stdout.reconfigure(line_buffering=True)
    try:
        status = fn()
    except SystemExit as err:
        if err.code is None or isinstance(err.code, int):
            return err.code or 0
        print(err.code, file=sys.stderr)  # sys.exit('message'): what the interpreter would do
        return 1
    except RunFailed as err:
        print(f'{prog}: {err}', file=sys.stderr)
        return 1
    except USER_ERRORS as err:
        if os.environ.get('PDNSR_DEBUG'):
            raise
        print(f'{prog}: error: {one_line(err)} (PDNSR_DEBUG=1 shows the traceback)', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr)
        return 130
    return 0 if status is None else int(status)
