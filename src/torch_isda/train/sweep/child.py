"""``python -m torch_isda.train.sweep.child RUN.json``: one run of ``isda compare --jobs N``
in its own process (:func:`~torch_isda.train.sweep.runs.execute_run`); exit status 0 when
the run finished, 1 when it failed (the reason is in its state file)."""

from __future__ import annotations

import sys
from pathlib import Path

from .runs import SweepRun, execute_run, read_json


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m torch_isda.train.sweep.child OUT/sweep/runs/<run>.json",
              file=sys.stderr)
        return 2
    data = read_json(Path(argv[0]))
    if data is None:
        print(f"cannot read the run file {argv[0]!r}", file=sys.stderr)
        return 2
    run = SweepRun.from_dict(data)
    outcome = execute_run(run)
    return 0 if outcome["state"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
