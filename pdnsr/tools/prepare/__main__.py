"""``python -m pdnsr.tools.prepare coco|faces|benchmark ...``: ``pdnsr-prepare`` without installing pdnsr."""

import sys

from pdnsr.tools.prepare.cli import main

if __name__ == '__main__':
    sys.exit(main())
