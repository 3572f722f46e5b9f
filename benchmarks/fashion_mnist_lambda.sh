#!/usr/bin/env bash
# lambda_0 sensitivity for docs/reproduce/fashion-mnist.md, on a validation split only.
#
# The CPU protocol's setting (ResNet-8, in_chans=1, 10 epochs, preset "mnist") on the same
# class-balanced 10,000-image subset (subset seed 0), of which 2,000 images (200 per class)
# are held out and evaluated instead of the test set (--dataset-kwargs val_size=2000): the
# test set is never used. CE and ISDA with lambda_0 in LAMBDAS, seeds SEEDS, JOBS processes
# at once, then the `isda compare` table (its "test" columns are the validation split).
#
# Usage (repository root):  bash benchmarks/fashion_mnist_lambda.sh
#   env: OUT (default runs/fashion-mnist-lambda), LAMBDAS ("0.1 0.25 0.5 1"), SEEDS ("0 1"),
#        EPOCHS (10), JOBS (10), PYTHON (default python), DATA_DIR (default data).
set -euo pipefail

OUT=${OUT:-runs/fashion-mnist-lambda}
LAMBDAS=${LAMBDAS:-"0.1 0.25 0.5 1"}
SEEDS=${SEEDS:-"0 1"}
EPOCHS=${EPOCHS:-10}
JOBS=${JOBS:-10}
PYTHON=${PYTHON:-python}
DATA_DIR=${DATA_DIR:-data}
export PYTHONPATH=${PYTHONPATH:-$PWD/src}
export OMP_NUM_THREADS=1

COMMON=(--dataset fashion_mnist --data-dir "$DATA_DIR" --model resnet8
        --model-kwargs in_chans=1 --dataset-kwargs train_size=10000,val_size=2000
        --epochs "$EPOCHS" --threads 1 --channels-last --device cpu)
mkdir -p "$OUT"
SPECS=(ce)
for lam in $LAMBDAS; do SPECS+=("isda(lambda0=$lam)"); done

RUNS=()
for seed in $SEEDS; do for spec in "${SPECS[@]}"; do RUNS+=("$spec|$seed"); done; done
run_one() {  # spec|seed
  local spec=${1%|*} seed=${1#*|}
  local dir="$OUT/$("$PYTHON" -c "from torch_isda.train.criteria import spec_dirname; print(spec_dirname('$spec'))")/seed$seed"
  local extra=()
  if [[ -f "$dir/checkpoint.pt" && ! -f "$dir/result.json" ]]; then extra=(--resume); fi
  echo "=== $(date +%T) $spec seed $seed -> $dir"
  "$PYTHON" -m torch_isda.cli train "${COMMON[@]}" --loss "$spec" --seed "$seed" --out "$dir" \
    "${extra[@]}"
}
for (( w = 0; w < JOBS; w++ )); do
  ( for (( i = w; i < ${#RUNS[@]}; i += JOBS )); do run_one "${RUNS[$i]}"; done ) \
    > "$OUT/worker$w.log" 2>&1 &
done
wait

losses=$(IFS=,; echo "${SPECS[*]}")
"$PYTHON" -m torch_isda.cli compare "${COMMON[@]}" --losses "$losses" \
  --seeds "$(echo $SEEDS | tr ' ' ','),"  --out "$OUT" --quiet
