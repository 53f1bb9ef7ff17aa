"""``python -m fastxent``: the same as the ``fastxent`` command."""

import sys

from .cli import main

if __name__ == "__main__":  # pytest's --doctest-modules imports this module too
    sys.exit(main())
