#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU, nvcc and Python torch with CUDA (its LibTorch is
# used): builds the kernels and pmamba-gpu-check in one go and runs it (correctness of every
# CUDA kernel against the CPU reference, then speed against the device's copy bandwidth).
# With PMAMBA_FULL=1 it also builds everything (needs HDF5, zstd, xxhash, CLI11, nlohmann-json and
# Gloo headers there) and runs scripts/gpu-train-check.sh: training on the GPU, over NCCL when
# two GPUs are present, bf16 autocast, GPU checkpoints read on the CPU.
# Output goes to stdout and, when $OUT is set, to $OUT/gpu-check.txt (and gpu-train-check.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_PREFIX=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
ARCH=${CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.')}
ARCH=${ARCH:-90}
GEN=$(command -v ninja >/dev/null && echo "-G Ninja" || true)
cmake -S . -B build-gpu $GEN -DCMAKE_BUILD_TYPE=Release -DPMAMBA_KERNELS_ONLY=ON -DPMAMBA_WITH_CUDA=ON \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
  -DCMAKE_CUDA_COMPILER="${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
cmake --build build-gpu -j "$(nproc)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
LOG=${OUT:-build-gpu}/gpu-check.txt
build-gpu/bin/pmamba-gpu-check | tee "$LOG"
if [ "${PMAMBA_FULL:-0}" = 1 ]; then
  cmake -S . -B build-gpu-full $GEN -DCMAKE_BUILD_TYPE=Release -DPMAMBA_WITH_CUDA=ON -DPMAMBA_BUILD_TESTS=OFF \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
    -DCMAKE_CUDA_COMPILER="${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
  cmake --build build-gpu-full -j "$(nproc)"
  scripts/gpu-train-check.sh build-gpu-full | tee "${OUT:-build-gpu-full}/gpu-train-check.txt"
fi
