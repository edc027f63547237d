#!/usr/bin/env bash
# Compile-checks the CUDA kernels (kernels/cuda/*.cu) with nvcc for the GPUs this project runs
# on (sm_80, sm_90). They are plain CUDA C++ (no LibTorch), so this works with a CPU LibTorch.
# Exits 77 (reported as skipped) when no nvcc is installed.
set -u
NVCC=${PMAMBA_NVCC:-$(command -v nvcc || true)}
[ -x "$NVCC" ] || [ -x /usr/local/cuda/bin/nvcc ] || { echo "SKIPPED: no nvcc"; exit 77; }
[ -x "$NVCC" ] || NVCC=/usr/local/cuda/bin/nvcc
T=$(mktemp -d "${TMPDIR:-/tmp}/pmamba-nvcc-XXXXXX")
trap 'rm -rf "$T"' EXIT
SRC=${PMAMBA_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
status=0
for cu in "$SRC"/kernels/cuda/*.cu; do
  for arch in 80 90; do
    if "$NVCC" -std=c++17 -O3 -I"$SRC" -gencode "arch=compute_$arch,code=sm_$arch" --resource-usage \
         -c "$cu" -o "$T/$(basename "$cu" .cu)-$arch.o" > "$T/log" 2>&1; then
      echo "ok   $(basename "$cu") sm_$arch: $(grep -o 'Used [0-9]* registers.*' "$T/log" | sort -u | head -1)"
    else
      echo "FAIL $(basename "$cu") sm_$arch"; cat "$T/log"; status=1
    fi
  done
done
exit $status
