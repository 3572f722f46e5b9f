"""``python -m torch_isda.train ...`` (what torchrun workers run) is ``isda train ...``."""

import sys

from .command_train import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
