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
    """The message of ``err`` on one line (a KeyError's message without the quotes ``str`` adds)."""
    message = err.args[0] if isinstance(err, KeyError) and err.args else err
    return ' '.join(str(message).split()) or type(err).__name__
