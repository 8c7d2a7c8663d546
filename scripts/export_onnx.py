"""Export a pdnsr network as an ONNX graph or a spandrel file: ``pdnsr.export.cli.main`` (also ``pdnsr-export``).

Example (from the repository root):

    python scripts/export_onnx.py --opt options/test_edsr_x4.yml --weights experiments/model.pth \\
        --output edsr_plus_x4.onnx

See docs/deploy.md for every option.
"""

import os
import sys

try:
    import pdnsr  # noqa: F401  (applies the basicsr compatibility patches)
except ImportError:
    # Run from a checkout that was not pip-installed.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import pdnsr  # noqa: F401

from pdnsr.export.cli import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main(prog=os.path.basename(sys.argv[0])))
