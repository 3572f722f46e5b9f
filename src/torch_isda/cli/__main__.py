"""``python -m torch_isda.cli ...`` is ``isda ...``."""

import sys

from .program import main

if __name__ == "__main__":
    sys.exit(main())
