"""Entry point for ``python -m raftkv``."""

import sys

from raftkv.cli import main

if __name__ == "__main__":
    sys.exit(main())
