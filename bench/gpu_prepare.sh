#!/usr/bin/env bash
# Run on a machine WITH network, in the repository root, before bench/gpu_check.py on a GPU machine that has none.
#   bash bench/gpu_prepare.sh [DATA_ROOT]      (default ../shared/data)
# 1. .whl/: wheels (CPython 3.12, manylinux x86_64) of the dependencies that the GPU machine's Python lacks
#    (pydantic and its parts, torchinfo); gpu_check.py installs them offline from there.
# 2. .gpudata/: a copy of the data the check uses that fits the transfer (MNIST raw files, the CIFAR-10 JPEG
#    tarball: about 31 MB). CIFAR-100 (178 MB) is left out unless GPU_CHECK_CIFAR100=1.
# Both folders are git-ignored. Then, on the GPU machine: python3 bench/gpu_check.py OUTDIR --data .gpudata
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
py=${PYTHON:-python3}
wheels=(pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 torchinfo==1.8.0)
mkdir -p .whl
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${wheels[@]}"
mkdir -p .gpudata/mnist/raw .gpudata/cifar10-jpeg
cp -u "$data"/mnist/raw/*.gz .gpudata/mnist/raw/
cp -u "$data"/cifar10-jpeg/cifar10-jpeg.tar.gz .gpudata/cifar10-jpeg/
if [ "${GPU_CHECK_CIFAR100:-0}" = 1 ]; then mkdir -p .gpudata/cifar-100-python && cp -u "$data"/cifar-100-python/* .gpudata/cifar-100-python/; fi
du -sh .whl .gpudata
echo "carry: .whl .gpudata   command: python3 bench/gpu_check.py \$OUT --data .gpudata"
