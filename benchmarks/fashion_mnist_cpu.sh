#!/usr/bin/env bash
# CPU protocol of docs/reproduce/fashion-mnist.md: CE vs ISDA on Fashion-MNIST, 5 seeds.
#
# ResNet-8 (in_chans=1) on a class-balanced 10,000-image subset of the training set
# (subset seed 0, the same images for every run), evaluated on the full 10,000-image test
# set, lambda_0 = 0.5 (the paper's CIFAR default), preset "mnist" (SGD + Nesterov 0.9,
# lr 0.1, batch 128, wd 5e-4, cosine) shortened to EPOCHS epochs, augmentation crop
# (padding 2) + flip, channels_last (about 1.7x faster than NCHW on this CPU). JOBS
# single-threaded processes work through the runs in the order seed 0 ce, seed 0 isda,
# seed 1 ce, ..., so that a partial sweep stays paired.
#
# Usage (repository root):  bash benchmarks/fashion_mnist_cpu.sh
#   env: OUT (default runs/fashion-mnist-cpu), EPOCHS (10), SEEDS ("0 1 2 3 4"), JOBS (2),
#        PYTHON (default: the project's .venv/bin/python when present, else python3),
#        DATA_DIR (default data; the Debian copy in /usr/share/datasets/fashion-mnist is used
#        when the default data/ has none), DOWNLOAD=1 to fetch the official files into
#        DATA_DIR/fashion_mnist.
# Re-running continues: finished runs are reused, interrupted ones resumed (never while
# another process is still training them).
set -euo pipefail

OUT=${OUT:-runs/fashion-mnist-cpu}
EPOCHS=${EPOCHS:-10}
JOBS=${JOBS:-2}
SEEDS=${SEEDS:-"0 1 2 3 4"}
project_python="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"
if [[ -x "$project_python" ]]; then default_python=$project_python; else default_python=python3; fi
PYTHON=${PYTHON:-$default_python}
DATA_DIR=${DATA_DIR:-data}
export PYTHONPATH=${PYTHONPATH:-$PWD/src}
export OMP_NUM_THREADS=1

COMMON=(--dataset fashion_mnist --data-dir "$DATA_DIR" --model resnet8
        --model-kwargs in_chans=1 --dataset-kwargs train_size=10000 --epochs "$EPOCHS"
        --threads 1 --channels-last --device cpu)
if [[ "${DOWNLOAD:-0}" == 1 ]]; then COMMON+=(--download); fi
mkdir -p "$OUT"

run_one() {  # loss seed
  local dir="$OUT/$1/seed$2" extra=()
  if [[ -f "$dir/checkpoint.pt" && ! -f "$dir/result.json" ]]; then extra=(--resume); fi
  echo "=== $(date +%T) $1 seed $2 -> $dir"
  "$PYTHON" -m torch_isda.cli train "${COMMON[@]}" --loss "$1" --seed "$2" --out "$dir" \
    "${extra[@]}"
}

# The runs in the order seed 0 ce, seed 0 isda, seed 1 ce, ...; worker w of JOBS takes
# runs w, w + JOBS, ... (each run is deterministic: the schedule does not change results).
RUNS=()
for seed in $SEEDS; do for loss in ce isda; do RUNS+=("$loss $seed"); done; done
for (( w = 0; w < JOBS; w++ )); do
  ( for (( i = w; i < ${#RUNS[@]}; i += JOBS )); do run_one ${RUNS[$i]}; done ) \
    > "$OUT/worker$w.log" 2>&1 &
done
wait

# The Table-2-style summary (reuses the runs above) and the per-seed table of the page.
seeds_csv=$(echo $SEEDS | tr ' ' ',')
"$PYTHON" -m torch_isda.cli compare "${COMMON[@]}" --losses ce,isda --seeds "$seeds_csv," \
  --out "$OUT" --quiet
"$PYTHON" benchmarks/fashion_mnist_table.py "$OUT" --write "$OUT/summary.md"
