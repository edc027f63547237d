#!/usr/bin/env bash
# Builds pmamba against an official CUDA build of LibTorch 2.x (the PyPI torch wheel) with
# -DPMAMBA_WITH_CUDA=ON and runs the whole test suite on the CPU. On a machine without a GPU this
# still proves that the CUDA-only code (kernels and their dispatch, ProcessGroupNCCL in the
# transport, the 2.x autocast and c10d APIs) compiles and links, and that every CPU test passes
# with that LibTorch; the CUDA kernel tests report themselves skipped.
# Needs nvcc (CUDA 13) in /usr/local/cuda and python3 with pip; downloads ~1 GB into CACHE.
# Usage: scripts/libtorch2-check.sh [CACHE_DIR]   (default /tmp/pmamba-libtorch2; reused if there)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${1:-/tmp/pmamba-libtorch2}
TORCH_VERSION=${TORCH_VERSION:-2.15.0}
CUDA=${CUDA_HOME:-/usr/local/cuda}
mkdir -p "$CACHE"
if [ ! -f "$CACHE/torch/share/cmake/Torch/TorchConfig.cmake" ]; then
  python3 -m pip download --no-deps --only-binary=:all: -d "$CACHE/wheel" "torch==$TORCH_VERSION"
  python3 - "$CACHE" <<'PY'
import glob, sys, zipfile
cache = sys.argv[1]
with zipfile.ZipFile(glob.glob(cache + "/wheel/torch-*.whl")[0]) as z:
    for n in z.namelist():
        if n.startswith(("torch/include/", "torch/lib/", "torch/share/")):
            z.extract(n, cache)
PY
fi
# libtorch_cuda needs a newer NCCL than the toolkit's, and three libraries the toolkit lacks.
if [ ! -d "$CACHE/nv/nvidia" ]; then
  python3 -m pip install --no-deps --target "$CACHE/nv" nvidia-nccl-cu13 nvidia-cufile nvidia-cusparselt-cu13 \
      nvidia-nvshmem-cu13
fi
LIBS=$(ls -d "$CACHE"/nv/nvidia/*/lib | tr '\n' ':')$CUDA/lib64
export LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
B=$CACHE/build
# TORCH_LIBRARY / c10_LIBRARY: otherwise find_library prefers a system LibTorch (Debian's 1.13).
cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release -DPMAMBA_WITH_CUDA=ON \
  -DCMAKE_PREFIX_PATH="$CACHE/torch/share/cmake" -DTORCH_LIBRARY="$CACHE/torch/lib/libtorch.so" \
  -Dc10_LIBRARY="$CACHE/torch/lib/libc10.so" -DCMAKE_CUDA_COMPILER="$CUDA/bin/nvcc" \
  -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,${LIBS%:*}"
cmake --build "$B" -j "$(nproc)"
# cli.train_torchrun skips here: the torchrun on this machine is Debian's (torch 1.13), whose
# agent serves a TCPStore that a LibTorch 2.x client cannot talk to.
cd "$B" && ctest --output-on-failure -j "$(nproc)" --timeout 1500
