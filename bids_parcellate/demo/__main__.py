"""``python -m bids_parcellate.demo OUT [options]``: write a demo dataset.

See :func:`bids_parcellate.demo.command_line.main`.
"""

import sys

from bids_parcellate.demo.command_line import main

if __name__ == "__main__":
    sys.exit(main())
