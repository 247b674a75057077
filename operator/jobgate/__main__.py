"""`python -m jobgate` and the `jobgate` console script."""

from __future__ import annotations

import sys

from jobgate.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
