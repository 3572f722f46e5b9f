#!/usr/bin/env bash
# Issue 21's GPU check in one command (under 8 minutes on one H100 by the budgets below):
#   1. benchmarks/gpu_step.py: loss alone, eager / compiled steps, whole-step compiled and
#      CUDA-graph rows (3 runs each, median and spread), new default next to the old one;
#   2. benchmarks/table2_epoch.py: one ResNet-110 epoch (391 steps, CIFAR-shaped random data)
#      eager, compiled, captured and several runs at once, and the projected wall time of the
#      paper's Table 2 ResNet-110 row (2 losses x 5 seeds x 160 epochs).
# Usage: bash benchmarks/gpu_table2.sh [OUT_DIR]      (SKIP_GPU_STEP=1 for part 2 only)
# CPU check (tiny settings): SMOKE=1 bash benchmarks/gpu_table2.sh OUT_DIR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
out="${1:-$root/benchmarks/results/gpu_table2}"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python; fi
fi
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
if [ "${SMOKE:-0}" = 1 ]; then
  step_args=(--device cpu --smoke --tables loss,whole --repeats 3)
  epoch_args=(--device cpu --smoke)
else
  step_args=(--budget-s "${GPU_STEP_BUDGET:-150}")
  epoch_args=(--budget-s "${TABLE2_BUDGET:-200}")
fi
if [ "${SKIP_GPU_STEP:-0}" != 1 ]; then
  "$python" "$here/gpu_step.py" "${step_args[@]}" --out "$out" | tee "$out/gpu_step.log"
fi
"$python" "$here/table2_epoch.py" "${epoch_args[@]}" --out "$out" | tee "$out/table2_epoch.log"
