"""``python -m ops``: the same as the ``servingctl`` script."""

import sys

from ops.cli import main

if __name__ == "__main__":
    sys.exit(main())
