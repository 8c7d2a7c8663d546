"""``python -m pdnsr.data.preparation coco|faces|benchmark ...``: ``pdnsr-prepare`` without installing pdnsr."""

import sys

from pdnsr.data.preparation.cli import main

if __name__ == '__main__':
    sys.exit(main())
