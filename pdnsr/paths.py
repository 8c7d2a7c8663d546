"""Where outputs (experiments/, results/, tb_logger/) go."""

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
