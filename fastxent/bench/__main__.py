"""``python -m fastxent.bench``: the benchmark, with the same options as ``fastxent bench``."""

import sys

from .command import main

if __name__ == "__main__":
    sys.exit(main())
