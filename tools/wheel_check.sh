#!/usr/bin/env bash
# The package as a user gets it: build the sdist and the wheel (`python -m build`), install
# the *wheel* (not the source tree) with its `train` extra into a fresh virtualenv, and run
# `isda --version` and the main job's smoke test (`isda compare`, 1 seed, 1 epoch) from it,
# outside the source tree. Catches files missing from the package (py.typed, data files,
# anything the command line reads at run time).
#
#   bash tools/wheel_check.sh [DIR]     # default DIR: .venv-wheel; PYTHON builds (default
#                                       # .venv/bin/python when present, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dir=${1:-.venv-wheel}
default_python=python3
[ -x .venv/bin/python ] && default_python=.venv/bin/python
python=${PYTHON:-$default_python}
start=$(date +%s)

rm -rf dist "$dir"
"$python" -m build --outdir dist . >/dev/null
sdist=$(ls dist/torch_isda-*.tar.gz)
wheel=$(ls dist/torch_isda-*-py3-none-any.whl)
echo "built $sdist and $wheel"

python3 -m venv "$dir"
dir=$(cd "$dir" && pwd)
"$dir/bin/pip" install -q torch==2.13.0
"$dir/bin/pip" install -q "$root/$wheel[train]"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"  # away from src/: only the installed wheel can be imported
"$dir/bin/isda" --version
"$dir/bin/python" - "$root/$wheel" <<'PY'
import importlib.metadata
import sys
from pathlib import Path

import torch_isda

installed = Path(torch_isda.__file__).resolve()
assert "site-packages" in installed.parts, f"torch_isda imported from {installed}, not the wheel"
assert (installed.parent / "py.typed").is_file(), "py.typed is missing from the installed wheel"
version = importlib.metadata.version("torch-isda")
assert version == torch_isda.__version__, (version, torch_isda.__version__)
assert f"-{version}-" in Path(sys.argv[1]).name, (sys.argv[1], version)
print(f"torch_isda {version} imported from {installed.parent}")
PY
OMP_NUM_THREADS=1 "$dir/bin/isda" compare --seeds 1 --epochs 1 --out smoke --quiet
for name in table.md table.csv curves.png; do
  [ -s "smoke/$name" ] || { echo "the smoke run wrote no smoke/$name" >&2; exit 1; }
done
echo "wheel check done after $(( $(date +%s) - start )) s"
