"""Models, registered with basicsr's MODEL_REGISTRY on import: PDNModel."""

from pdnsr.models.pdn_model import PDNModel

__all__ = ['PDNModel']
