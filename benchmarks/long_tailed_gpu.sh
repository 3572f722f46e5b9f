#!/usr/bin/env bash
# GPU protocol of docs/reproduce/long-tailed.md: the full Fashion-MNIST-LT on one GPU.
#
# 10 images per class held out as the balanced meta set, then the exponential long tail
# (rho = 100) from n_max = 5,990: 14,8xx training images; the balanced 10,000-image test
# set. ResNet-32 (in_chans=1), preset "mnist" over EPOCHS (default 20) epochs, bf16,
# channels_last; methods ce, balanced_softmax, ldam_drw, isda, isda + balanced softmax,
# metasaug; seeds 0-4: 30 concurrent `isda train` processes, stopped after BUDGET_S.
# Everything else (arguments, outputs, SMOKE=1 for a CPU plumbing check) is that of
# benchmarks/fashion_mnist_gpu.sh, which this runs with LOSSES and DATASET_KWARGS set (the
# SMOKE=1 check here: seed 0, n_max=300, ResNet-8, whose CPU evaluation of the 10,000 test
# images is affordable on a small machine). RISDA is not among the defaults (the budget was
# sized for 30 processes): LOSSES="risda" runs its five seeds on their own.
#
# Usage (repository root): bash benchmarks/long_tailed_gpu.sh [DATA] [OUT]
#   DATA: folder of the four Fashion-MNIST IDX files (default .gpu_data/fashion-mnist)
#   OUT:  default runs/long-tailed-gpu
set -uo pipefail
export LOSSES=${LOSSES:-"ce balanced_softmax ldam_drw isda isda(logit_adjustment=1) metasaug"}
if [[ "${SMOKE:-0}" == 1 ]]; then
  export DATASET_KWARGS=${DATASET_KWARGS:-imbalance=100,val_per_class=10,n_max=300}
  export SEEDS=${SEEDS:-"0"} MODEL=${MODEL:-resnet8}
else
  export DATASET_KWARGS=${DATASET_KWARGS:-imbalance=100,val_per_class=10}
  export EPOCHS=${EPOCHS:-20}
fi
exec bash "$(dirname "$0")/fashion_mnist_gpu.sh" "${1:-.gpu_data/fashion-mnist}" \
  "${2:-${OUT:-runs/long-tailed-gpu}}"
