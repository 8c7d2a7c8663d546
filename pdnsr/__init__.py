"""pdnsr: prompt-guided dynamic super-resolution (PDN) as a BasicSR plugin.

Importing the package applies the basicsr compatibility patches (``pdnsr.compat``), then registers the networks,
datasets and models with basicsr's registries, so option files can say ``type: RCANPlus`` or
``model_type: PDNModel``.
"""

from pdnsr import compat

compat.apply()

from pdnsr import archs, data, models  # noqa: E402,F401  (registration happens on import)

compat.patch_basicsr()

__version__ = '0.1.0'
