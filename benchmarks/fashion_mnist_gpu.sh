#!/usr/bin/env bash
# GPU protocol of docs/reproduce/fashion-mnist.md: CE vs ISDA on the full Fashion-MNIST.
#
# ResNet-32 (in_chans=1) on all 60,000 training images, evaluated on the 10,000 test
# images after every epoch; preset "mnist" (SGD + Nesterov 0.9, lr 0.1, batch 128, wd 5e-4,
# cosine) over EPOCHS epochs, crop (padding 2) + flip, lambda_0 = 0.5; bf16 autocast,
# channels_last, the whole dataset resident on the GPU (the harness moves in-memory
# datasets to the device and augments there), cuDNN autotuning (--no-deterministic).
# The 2 x SEEDS runs are launched at once as separate `isda train` processes on the one
# GPU: a ResNet-32 step is bound by kernel launches, so one process leaves the GPU mostly
# idle.
#
# Usage (repository root, no install needed):
#   bash benchmarks/fashion_mnist_gpu.sh [DATA] [OUT]
#     DATA  folder holding the four official IDX files train-images-idx3-ubyte.gz, ...
#           (default .gpu_data/fashion-mnist)
#     OUT   where the logs and tables go (default $OUT, else runs/fashion-mnist-gpu)
#   env:  EPOCHS (default 15; measured 320 s for the ten runs on an H100), SEEDS (default "0 1 2 3 4"), BUDGET_S (default 420: every
#         training process is stopped this many seconds after the script started),
#         HARD_S (default 460: the final `isda compare` table is only made if it fits
#         before this), PYTHON (default python3), DEVICE (default cuda), AMP (default bf16),
#         MODEL (default resnet32), LOSSES (default "ce isda": the criterion specs,
#         space-separated), DATASET_KWARGS (default none: options of the training set, e.g.
#         imbalance=100,val_per_class=10; benchmarks/long_tailed_gpu.sh sets them).
#   SMOKE=1: a CPU plumbing check: 1 epoch on a 600-image subset with a 100-image
#         validation split in place of the test set, seeds 0 1 (4 processes), --device cpu,
#         no autocast. It needs about 26 CPU-seconds in all; on the shared 2-core
#         development machine at load ~9 it took 154 s wall (hence BUDGET_S 150, HARD_S 190
#         in smoke mode).
#
# Written progressively under OUT (every 10 s while the runs train, so an interrupted
# script still leaves numbers): summary.md (per-seed table, see
# benchmarks/fashion_mnist_table.py), runs/<loss>/seed<k>/{metrics.csv,metrics.json,
# config.json,result.json}, logs/<loss>-seed<k>.log, env.txt; when every run finished in
# time also table.md / table.csv / curves.png of `isda compare` (which reuses the runs).
# Checkpoints stay in a temporary work folder (deleted at the end).
set -uo pipefail

START=$(date +%s)
DATA=${1:-.gpu_data/fashion-mnist}
OUTDIR=${2:-${OUT:-runs/fashion-mnist-gpu}}
PYTHON=${PYTHON:-python3}
SMOKE=${SMOKE:-0}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=1

LOSSES=${LOSSES:-"ce isda"}
if [[ "$SMOKE" == 1 ]]; then
  EPOCHS=${EPOCHS:-1}; SEEDS=${SEEDS:-"0 1"}; DEVICE=${DEVICE:-cpu}; AMP=${AMP:-none}
  BUDGET_S=${BUDGET_S:-150}; HARD_S=${HARD_S:-190}
  SUBSET=(--dataset-kwargs "${DATASET_KWARGS:-train_size=600,val_size=100}" --batch-size 64)
else
  EPOCHS=${EPOCHS:-15}; SEEDS=${SEEDS:-"0 1 2 3 4"}; DEVICE=${DEVICE:-cuda}; AMP=${AMP:-bf16}
  BUDGET_S=${BUDGET_S:-420}; HARD_S=${HARD_S:-460}
  SUBSET=()
  if [[ -n "${DATASET_KWARGS:-}" ]]; then SUBSET=(--dataset-kwargs "$DATASET_KWARGS"); fi
fi

for name in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz \
            t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  if [[ ! -f "$DATA/$name" ]]; then
    echo "error: $DATA/$name not found (pass the folder holding the Fashion-MNIST IDX files)" >&2
    exit 2
  fi
done
mkdir -p "$OUTDIR/logs" "$OUTDIR/runs"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fashion-mnist-gpu.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# the dataset looks for DATA_DIR/fashion_mnist/<official names>
mkdir -p "$WORK/data/fashion_mnist"
for f in "$DATA"/*-ubyte.gz; do ln -s "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$WORK/data/fashion_mnist/"; done

{
  echo "started $(date -u +%FT%TZ), EPOCHS=$EPOCHS SEEDS=\"$SEEDS\" DEVICE=$DEVICE AMP=$AMP BUDGET_S=$BUDGET_S SMOKE=$SMOKE"
  echo "git: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" 2>&1
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  echo "cpus: $(nproc --all)"
} > "$OUTDIR/env.txt"
cat "$OUTDIR/env.txt"

COMMON=(--dataset fashion_mnist --data-dir "$WORK/data" --model "${MODEL:-resnet32}"
        --model-kwargs in_chans=1 --epochs "$EPOCHS" --device "$DEVICE" --amp "$AMP"
        --channels-last --no-deterministic --threads 1 "${SUBSET[@]}")

sync_results() {  # copy the small per-run files into OUT and rewrite the summary
  local run
  for run in "$WORK"/runs/*/seed*; do
    [[ -d "$run" ]] || continue
    local dest="$OUTDIR/runs/${run#"$WORK"/runs/}"
    mkdir -p "$dest"
    for f in metrics.csv metrics.json config.json result.json; do
      [[ -f "$run/$f" ]] && cp "$run/$f" "$dest/$f.tmp" && mv "$dest/$f.tmp" "$dest/$f"
    done
  done
  "$PYTHON" benchmarks/fashion_mnist_table.py "$OUTDIR/runs" --write "$OUTDIR/summary.md" \
    > /dev/null 2>&1 || true
}

pids=()
for seed in $SEEDS; do
  for loss in $LOSSES; do
    left=$(( BUDGET_S - ($(date +%s) - START) ))
    key=$(echo "$loss" | sed -E 's/[[:space:]]+//g; s/[^A-Za-z0-9_.+=,-]+/_/g; s/^_+|_+$//g')
    timeout --signal=TERM --kill-after=5 "$left" \
      "$PYTHON" -m torch_isda.cli train "${COMMON[@]}" --loss "$loss" --seed "$seed" \
      --out "$WORK/runs/$key/seed$seed" > "$OUTDIR/logs/$key-seed$seed.log" 2>&1 &
    pids+=($!)
  done
done
echo "launched ${#pids[@]} runs at +$(( $(date +%s) - START ))s"

while true; do
  running=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && running=$((running + 1)); done
  sync_results
  [[ $running == 0 ]] && break
  sleep 10
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
sync_results

elapsed=$(( $(date +%s) - START ))
finished=$(ls "$OUTDIR"/runs/*/seed*/result.json 2>/dev/null | wc -l)
echo "runs finished: $finished of ${#pids[@]} ($failed exited non-zero or were stopped at the budget) after ${elapsed}s" | tee -a "$OUTDIR/env.txt"
left=$(( HARD_S - elapsed - 3 ))
if [[ $failed == 0 && $left -gt 10 ]]; then
  seeds_csv="$(echo $SEEDS | tr ' ' ','),"
  timeout "$(( left < 40 ? left : 40 ))" "$PYTHON" -m torch_isda.cli compare "${COMMON[@]}" \
    --losses "$(echo $LOSSES | tr ' ' ',')" \
    --seeds "$seeds_csv" --out "$WORK/runs" --quiet > "$OUTDIR/logs/compare.log" 2>&1 &&
    cp "$WORK"/runs/table.md "$WORK"/runs/table.csv "$WORK"/runs/curves.png "$OUTDIR/" 2>/dev/null
fi
cat "$OUTDIR/summary.md" 2>/dev/null
echo "total wall time $(( $(date +%s) - START ))s"
