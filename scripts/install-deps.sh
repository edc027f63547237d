#!/usr/bin/env bash
# Installs the Debian 12 packages pmamba builds and tests with (see DESIGN.md §1).
# As root it runs apt-get; otherwise it prints the exact command and fails.
set -euo pipefail

packages=(
  g++ make cmake pkg-config
  libtorch-dev libgloo-dev
  libopenblas0-pthread  # Debian's LibTorch calls libblas.so.3; without OpenBLAS that is the
                        # reference BLAS, ~10x slower matrix products
  libhdf5-dev hdf5-tools
  libzstd-dev libxxhash-dev
  libcli11-dev nlohmann-json3-dev libgtest-dev
  python3
  python3-torch  # torchrun, for the test that launches pmamba-train under it
  iproute2       # ip netns, for the test that runs ranks on two simulated hosts
)

# `make fuzz`: clang with its libFuzzer and sanitizer runtimes.
if [[ "${1:-}" == "--fuzz" ]]; then
  packages=(clang libclang-rt-dev)
fi

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

line="apt-get install -y --no-install-recommends ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
  echo "pmamba: missing Debian packages: ${missing[*]}" >&2
  echo "pmamba: install them with:  sudo apt-get update && sudo $line" >&2
  exit 1
fi
echo "pmamba: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
$line
