"""The errors a user can fix, below every other module of pdnsr (it imports nothing of pdnsr).

Library code raises them (or ``ValueError`` / ``KeyError`` / ``OSError``); the command lines turn each into one line
on stderr and exit status 2 (:func:`pdnsr.cli.run_main`).
"""


class UserError(Exception):
    """A problem the user can fix, for code that has no better built-in type: reported as one line, exit 2."""


# Raised by pdnsr and basicsr for bad options, paths (OSError: missing, existing or unwritable), prompt stores and
# registry names (basicsr's registry raises KeyError).
USER_ERRORS = (UserError, ValueError, KeyError, OSError)


def one_line(err):
    """The message of ``err`` on one line (a KeyError's message without the quotes ``str`` adds).

    An error raised in a DataLoader worker reaches the main process with the worker's whole traceback as its
    message (``Caught ValueError in DataLoader worker process 0. Original Traceback ...``): its own last line is
    the message, and the worker is named after it.
    """
    message = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
    if message.startswith('Caught ') and 'Original Traceback' in message:
        where = message.split('.', 1)[0].split(' in ', 1)[-1]
        last = message.rstrip().splitlines()[-1]
        message = f'{last.split(": ", 1)[-1]} (in {where})'
    return ' '.join(message.split()) or type(err).__name__
