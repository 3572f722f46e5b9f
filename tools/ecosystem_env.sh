#!/usr/bin/env bash
# The ecosystem test environment: a second virtualenv with torchvision and timm beside the
# project (its `train` extra) and pytest, for the tests in tests/ecosystem/.
#
#   bash tools/ecosystem_env.sh [DIR]          # default DIR: .venv-eco (next to .venv)
#   DIR/bin/python -m pytest -q tests/ecosystem
#
# Pins: torch==2.14.1 with torchvision==0.29.1 (a CUDA build of about 5.5 GB that runs on
# the CPU; the CPU-only torch 2.13 of the main environment has no torchvision that loads
# beside it). Wheel folders that hold them locally (ECO_WHEELS, a space-separated list;
# by default the ones of this project's machines, where present) are searched first, so
# the 5.5 GB are not downloaded again; anything else comes from the package index.
# An existing DIR whose torch and torchvision already have the pins is reused: only the
# project is reinstalled (ECO_FRESH=1 rebuilds it).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.venv-eco}
torch_pin="torch==2.14.1"
vision_pin="torchvision==0.29.1"
start=$(date +%s)

links=()
for folder in ${ECO_WHEELS-/opt/pypi-more/files /opt/pypi/files}; do
  [ -d "$folder" ] && links+=(--find-links "$folder")
done

have_pins() {  # the versions come from torch_pin / vision_pin above
  "$dir/bin/python" - "${torch_pin#torch==}" "${vision_pin#torchvision==}" <<'PY' 2>/dev/null
import importlib.metadata as m
import sys
ok = (m.version("torch").split("+")[0] == sys.argv[1]
      and m.version("torchvision").split("+")[0] == sys.argv[2])
raise SystemExit(0 if ok else 1)
PY
}

if [ "${ECO_FRESH:-0}" = 1 ] || [ ! -x "$dir/bin/python" ] || ! have_pins; then
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install -q ${links[@]+"${links[@]}"} "$torch_pin" "$vision_pin" timm
fi
"$dir/bin/pip" install -q ${links[@]+"${links[@]}"} "$torch_pin" "$vision_pin" timm -e ".[train]" pytest
"$dir/bin/python" -c "import sys, torch, torchvision, timm, torch_isda
print(f'{sys.argv[1]}: torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}')" "$dir"
echo "ecosystem environment ready in $(( $(date +%s) - start )) s"
