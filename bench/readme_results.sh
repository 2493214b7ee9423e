#!/usr/bin/env bash
# Reproduces the results table (README.md, docs/results.md): each preset on real data, timed with bench/time_to_accuracy.py.
#   bash bench/readme_results.sh /path/to/data-root [out-dir]
# The data root must hold mnist/raw/*.gz (or MNIST/raw) and cifar10-jpeg/cifar10-jpeg.tar.gz.
# Prints one JSON object per run and leaves the run folders in out-dir (default runs/bench).
set -euo pipefail
root=${1:?usage: bench/readme_results.sh DATA_ROOT [OUT_DIR]}
out=${2:-runs/bench}
py=${PYTHON:-python}
jpeg="data.name=imagefolder data.path=cifar10-jpeg/cifar10-jpeg.tar.gz"
run() {  # name target preset [overrides...]
  local name=$1 target=$2 preset=$3; shift 3
  $py bench/time_to_accuracy.py --target "$target" --log "$out/$name.log" -- \
    $py train.py --config "configs/$preset.yaml" "data.root=$root" "output.dir=$out" "output.name=$name" \
    output.overwrite=true train.progress=false "$@"
}
mkdir -p "$out"
run mnist_fcn 98 mnist_fcn
run mnist_cnn 99 mnist_cnn
run cifar10_jpeg_fcn 50 cifar10_fcn $jpeg
run cifar10_jpeg_cnn 80 cifar10_cnn $jpeg
run cifar10_jpeg_fast 85 cifar10_fast $jpeg
