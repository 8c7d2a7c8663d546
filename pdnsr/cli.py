"""How the command-line entry points report user errors: one line on stderr and exit status 2, not a traceback."""

import os
import sys

# Raised by pdnsr and basicsr for bad options, paths, prompt stores and registry names.
USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


def run_main(fn, prog):
    """Call ``fn()``; a user error becomes ``prog: error: message`` and exit status 2. ``PDNSR_DEBUG=1`` re-raises."""
    try:
        fn()
    except USER_ERRORS as err:
        if os.environ.get('PDNSR_DEBUG'):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f'{prog}: error: {message} (PDNSR_DEBUG=1 shows the traceback)', file=sys.stderr)
        sys.exit(2)
