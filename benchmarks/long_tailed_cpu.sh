#!/usr/bin/env bash
# CPU protocol of docs/reproduce/long-tailed.md: Fashion-MNIST-LT (rho = 100), six methods,
# five seeds.
#
# Fashion-MNIST from the Debian copy (apt-get install dataset-fashion-mnist) or DATA_DIR;
# 10 images per class held out as the balanced meta set (val_per_class=10, MetaSAug's
# setting), then the exponential long tail of Cao et al. 2019 with rho = 100 from
# n_max = 5,990 (14,8xx training images, subset seed 0: the same images for every run); the
# balanced 10,000-image test set. ResNet-8 (in_chans=1), preset "mnist" (SGD + Nesterov 0.9,
# lr 0.1, batch 128, wd 5e-4, cosine) shortened to EPOCHS epochs, crop (padding 2) + flip,
# channels_last, one thread per run. Methods: ce, balanced_softmax, ldam_drw, isda,
# isda + balanced softmax (isda(logit_adjustment=1)), metasaug (its MetaSAug phase is the
# last 20 % of training). JOBS single-threaded processes work through the runs seed by seed.
#
# Usage (repository root):  bash benchmarks/long_tailed_cpu.sh
#   env: OUT (runs/long-tailed-cpu), EPOCHS (10), SEEDS ("0 1 2 3 4"), JOBS (2),
#        LOSSES (the six methods above, space-separated), PYTHON (python), DATA_DIR (data),
#        LT (the long-tail options, default imbalance=100,val_per_class=10),
#        MODEL_KWARGS (in_chans=1),
#        SMOKE=1: a plumbing check (EPOCHS 1, SEEDS "0", LT with n_max=300, batch 64).
# Cao et al.'s LDAM-DRW (cosine classifier, s = 30) is a second call with its own OUT, since
# the model differs:
#   LOSSES="ldam_drw(s=30)" MODEL_KWARGS=in_chans=1,classifier=cosine \
#     OUT=runs/long-tailed-cpu-cosine bash benchmarks/long_tailed_cpu.sh
# RISDA (measured later than the six) is a call of its own, the same protocol:
#   LOSSES="risda" OUT=runs/long-tailed-cpu-risda bash benchmarks/long_tailed_cpu.sh
# Re-running continues: finished runs are reused, interrupted ones resumed; the worker logs
# are appended to.
set -euo pipefail

SMOKE=${SMOKE:-0}
if [[ "$SMOKE" == 1 ]]; then
  EPOCHS=${EPOCHS:-1}; SEEDS=${SEEDS:-"0"}; LT=${LT:-imbalance=100,val_per_class=10,n_max=300}
  EXTRA=(--batch-size 64)
else
  EPOCHS=${EPOCHS:-10}; SEEDS=${SEEDS:-"0 1 2 3 4"}; LT=${LT:-imbalance=100,val_per_class=10}
  EXTRA=()
fi
OUT=${OUT:-runs/long-tailed-cpu}
JOBS=${JOBS:-2}
LOSSES=${LOSSES:-"ce balanced_softmax ldam_drw isda isda(logit_adjustment=1) metasaug"}
PYTHON=${PYTHON:-python}
DATA_DIR=${DATA_DIR:-data}
MODEL_KWARGS=${MODEL_KWARGS:-in_chans=1}
export PYTHONPATH=${PYTHONPATH:-$PWD/src}
export OMP_NUM_THREADS=1

COMMON=(--dataset fashion_mnist --data-dir "$DATA_DIR" --model resnet8
        --model-kwargs "$MODEL_KWARGS" --dataset-kwargs "$LT" --epochs "$EPOCHS"
        --threads 1 --channels-last --device cpu "${EXTRA[@]}")
mkdir -p "$OUT"
START=$(date +%s)

run_one() {  # loss seed
  local dir="$OUT/$("$PYTHON" -c 'import sys; from torch_isda.train.criteria import spec_dirname; print(spec_dirname(sys.argv[1]))' "$1")/seed$2" extra=()
  if [[ -f "$dir/checkpoint.pt" && ! -f "$dir/result.json" ]]; then extra=(--resume); fi
  echo "=== $(date +%T) $1 seed $2 -> $dir"
  "$PYTHON" -m torch_isda.cli train "${COMMON[@]}" --loss "$1" --seed "$2" --out "$dir" \
    "${extra[@]}"
}

RUNS=()
for seed in $SEEDS; do for loss in $LOSSES; do RUNS+=("$loss|$seed"); done; done
for (( w = 0; w < JOBS; w++ )); do
  ( for (( i = w; i < ${#RUNS[@]}; i += JOBS )); do run_one "${RUNS[$i]%|*}" "${RUNS[$i]#*|}"; done ) \
    >> "$OUT/worker$w.log" 2>&1 &  # appended: a second call on the same OUT keeps the log
done
wait
echo "training took $(( $(date +%s) - START )) s wall" | tee "$OUT/wall.txt"

# The table (all / many / medium / few, mean ± std and per seed), reusing the runs above.
seeds_csv="$(echo $SEEDS | tr ' ' ','),"
losses_csv=$(echo $LOSSES | tr ' ' ',')
"$PYTHON" -m torch_isda.cli compare "${COMMON[@]}" --losses "$losses_csv" --seeds "$seeds_csv" \
  --out "$OUT"
