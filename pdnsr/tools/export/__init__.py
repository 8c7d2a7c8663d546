"""Deployment: a trained pdnsr network as an ONNX graph or a spandrel-loadable file (``pdnsr-export``).

- :mod:`.standins`: export-friendly stand-ins of the DCM (plain convolutions and matrix products), built
  from a trained DCM, and the network wrapper that is traced (torch only).
- :mod:`pdnsr.tools.export.onnx`: writing, verifying and running ONNX graphs (onnx, onnxruntime).
- :mod:`pdnsr.tools.export.cli`: the ``pdnsr-export`` command.
- :mod:`pdnsr.tools.export.spandrel`: the spandrel file format and the architecture entries that load it.

The packages these need are the ``deploy`` extra (``pip install pdnsr[deploy]``); they are imported only when used, so
pdnsr without them still imports and runs (:func:`require`).
"""

import importlib

from pdnsr.errors import UserError

EXTRA = 'pip install pdnsr[deploy]'


def require(module, what='this'):
    """The module ``module``, imported; a missing one is a :class:`UserError` that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise UserError(f'{what} needs the {module} package, which is not installed: {EXTRA}') from err
