"""Start-up cost of ``import torch_isda`` and of the ``isda`` command, beside ``import torch``.

Each command runs in a fresh interpreter, ``--repeat`` times, round-robin (so a change of the
machine's load hits every command alike); the table gives the median and the fastest wall
time, the median minus ``import torch``'s, and the CPU time (user + system: less sensitive to
the machine's load than the wall time, which it approaches on an idle machine). Then
``python -X importtime`` of ``import torch`` then of the core's modules (``torch_isda.loss``,
``.hook``, ``.segmentation``; the package loads its names on first use) names the slowest
imports that ``import torch`` does not do, and whether ``torch._dynamo`` was imported.

    python benchmarks/import_time.py                                   # this interpreter
    python benchmarks/import_time.py --python before=/work/wt-base/.venv/bin/python \\
                                     --python after=.venv/bin/python   # side by side

The targets (issue 24): ``import torch_isda`` <= ``import torch`` + 0.3 s; ``isda --help``
<= 1.5 s on an idle machine. The load average is printed with the table: on a busy machine
every figure grows.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Tuple

COMMANDS: List[Tuple[str, str]] = [
    ("import torch", "import torch"),
    ("import torch_isda", "import torch_isda"),
    ("from torch_isda import ISDALoss, attach", "from torch_isda import ISDALoss, attach"),
    ("isda --version", "import sys; from torch_isda.cli import main; sys.argv[0] = 'isda'; main(['--version'])"),
    ("isda --help", "import sys; from torch_isda.cli import main; sys.argv[0] = 'isda'; main(['--help'])"),
]


def _run(python: str, code: str) -> Tuple[float, float]:
    """Wall time and CPU time (user + system) of one fresh interpreter running ``code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([python, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(pythons: Dict[str, str], repeat: int) -> Dict[Tuple[str, str], List[Tuple[float, float]]]:
    """(wall, CPU) times per ``(interpreter label, command label)``, measured round-robin."""
    times: Dict[Tuple[str, str], List[Tuple[float, float]]] = {}
    for _ in range(repeat):
        for label, python in pythons.items():
            for name, code in COMMANDS:
                times.setdefault((label, name), []).append(_run(python, code))
    return times


def importtime_report(python: str, top: int) -> Tuple[List[Tuple[int, str]], bool]:
    """The ``top`` slowest cumulative imports of the core that ``import torch`` does not do
    (microseconds, module), and whether ``torch._dynamo`` was imported."""

    def cumulative(code: str) -> Dict[str, int]:
        err = subprocess.run([python, "-X", "importtime", "-c", code], capture_output=True, text=True).stderr
        out = {}
        for line in err.splitlines():
            if line.startswith("import time:") and "|" in line:
                _, cum, name = line[len("import time:"):].split("|")
                if cum.strip().isdigit():
                    out[name.strip()] = int(cum)
        return out

    base = cumulative("import torch")
    # torch first, so that its cost is not counted twice; the core's modules by import statements
    # (the package's own first-use loading goes through importlib, which -X importtime does not log)
    mine = cumulative("import torch; import torch_isda.loss, torch_isda.hook, torch_isda.segmentation")
    extra = sorted(((us, name) for name, us in mine.items() if name not in base), reverse=True)
    return extra[:top], "torch._dynamo" in mine


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append", default=[],
                        help="LABEL=PATH of an interpreter with torch_isda installed (repeatable)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--top", type=int, default=8, help="slowest extra imports to list")
    args = parser.parse_args(argv)
    pythons = dict(p.split("=", 1) if "=" in p else (p, p) for p in args.python) or {"this": sys.executable}
    load = os.getloadavg()
    times = measure(pythons, args.repeat)
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, after: "
          f"{os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; {args.repeat} runs each, round-robin\n")
    print("| interpreter | command | wall median (s) | wall fastest (s) | wall - import torch (s) "
          "| CPU median (s) | CPU - import torch (s) |")
    print("|---|---|---|---|---|---|---|")
    for label in pythons:
        torch_wall = statistics.median(w for w, _ in times[(label, "import torch")])
        torch_cpu = statistics.median(c for _, c in times[(label, "import torch")])
        for name, _ in COMMANDS:
            wall = [w for w, _ in times[(label, name)]]
            cpu = statistics.median(c for _, c in times[(label, name)])
            med = statistics.median(wall)
            print(f"| {label} | `{name}` | {med:.2f} | {min(wall):.2f} | {med - torch_wall:+.2f} | {cpu:.2f} "
                  f"| {cpu - torch_cpu:+.2f} |")
    for label, python in pythons.items():
        extra, dynamo = importtime_report(python, args.top)
        print(f"\n{label}: torch._dynamo imported by the core: {'yes' if dynamo else 'no'}; "
              "slowest imports beyond `import torch` (cumulative, -X importtime):")
        for us, name in extra:
            print(f"  {us / 1e6:7.3f} s  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
