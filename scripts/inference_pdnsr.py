"""Super-resolve images with a pdnsr network: ``pdnsr.tools.infer.main`` (also installed as ``pdnsr-infer``).

Example (from the repository root):

    python scripts/inference_pdnsr.py --opt options/test_rcan_x4.yml --weights experiments/model.pth \\
        --input datasets/benchmarks/Set5/LRx4 --output results/set5_x4 --prompt "a baby wearing a knitted hat"

See docs/inference.md for every option.
"""

import os
import sys

import _checkout  # noqa: F401  (this checkout's pdnsr, basicsr patched)

# isort: split

from pdnsr.tools.infer import main

if __name__ == '__main__':
    sys.exit(main(prog=os.path.basename(sys.argv[0])))
