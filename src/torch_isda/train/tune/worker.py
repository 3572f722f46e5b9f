"""``python -m torch_isda.train.tune.worker OUT/tune.json``: one worker of ``isda tune
--jobs N`` (:func:`~torch_isda.train.tune.study.run_worker` on the shared study)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .study import TuneSpec, run_worker


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m torch_isda.train.tune.worker OUT/tune.json", file=sys.stderr)
        return 2
    run_worker(TuneSpec.from_dict(json.loads(Path(argv[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
