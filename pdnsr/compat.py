"""The patches basicsr 1.4.2 needs on current torch / torchvision, in one place.

``import pdnsr`` applies them before anything imports basicsr. Nothing else in the project patches basicsr.

1. ``basicsr/data/degradations.py`` imports ``torchvision.transforms.functional_tensor``, a module removed in
   torchvision 0.17, so every ``import basicsr`` fails. We register a stand-in module exposing the one function
   basicsr uses (``rgb_to_grayscale``), taken from ``torchvision.transforms.functional``.

Resuming on a machine without CUDA (``basicsr/train.py`` calls ``torch.cuda.current_device()``) is handled in
``pdnsr/train.py`` by loading the resume state itself, not by patching basicsr.
"""
import sys
import types

_FUNCTIONAL_TENSOR = 'torchvision.transforms.functional_tensor'


def apply():
    """Make ``import basicsr`` work on torchvision >= 0.17. Idempotent."""
    if _FUNCTIONAL_TENSOR in sys.modules:
        return
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401  (old torchvision: nothing to do)
        return
    except ImportError:
        pass
    from torchvision.transforms import functional

    stand_in = types.ModuleType(_FUNCTIONAL_TENSOR)
    stand_in.rgb_to_grayscale = functional.rgb_to_grayscale
    sys.modules[_FUNCTIONAL_TENSOR] = stand_in
