"""Export a pdnsr network as an ONNX graph or a spandrel file: ``pdnsr.tools.export.cli.main`` (also ``pdnsr-export``).

Example (from the repository root):

    python scripts/export_onnx.py --opt options/test_edsr_x4.yml --weights experiments/model.pth \\
        --output edsr_plus_x4.onnx

See docs/deploy.md for every option.
"""

import os
import sys

import _checkout  # noqa: F401  (this checkout's pdnsr, basicsr patched)

# isort: split

from pdnsr.tools.export.cli import main

if __name__ == '__main__':
    sys.exit(main(prog=os.path.basename(sys.argv[0])))
