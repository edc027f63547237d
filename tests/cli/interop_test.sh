#!/usr/bin/env bash
# Interoperability: Python h5py + hdf5plugin (installed with pip into a venv under the build
# tree) read every dataset of a pmamba checkpoint and check its xxh3-64 digest. Exits 77
# (reported by CTest as skipped) only when the packages cannot be installed.
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"
VENV=$BIN/../pyvenv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import h5py, hdf5plugin, xxhash' 2>/dev/null; then
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >"$T/venv.log" 2>&1 ||
     ! "$VENV/bin/pip" install --quiet --disable-pip-version-check h5py hdf5plugin xxhash >>"$T/venv.log" 2>&1; then
    echo "SKIPPED: could not install h5py/hdf5plugin/xxhash with pip:"
    tail -5 "$T/venv.log"
    rm -rf "$VENV"
    exit 77
  fi
fi
for comp in zstd:5 none; do
  run "$BIN/pmamba-ckpt" init "$T/c-$comp" --preset tiny --seed 11 --pp 3 --partition 1,3,0 --compression "$comp"
  expect_code 0
  run "$VENV/bin/python" "$PMAMBA_SOURCE_DIR/tests/cli/read_with_h5py.py" "$T/c-$comp"
  expect_code 0
  expect_out "checked"
  cat "$T/out"
done
# A trained checkpoint (its training state has real numbers, covered by the manifest's digest),
# and a version-1 checkpoint (variable-length strings) read the same way.
run "$BIN/pmamba-train" --preset tiny --data selective-copy --steps 2 --pp 2 --ckpt-dir "$T/trained" --quiet
expect_code 0
for ckpt in "$T/trained" "$PMAMBA_SOURCE_DIR/tests/fixtures/v1-trained"; do
  run "$VENV/bin/python" "$PMAMBA_SOURCE_DIR/tests/cli/read_with_h5py.py" "$ckpt"
  expect_code 0
  expect_out "checked"
  cat "$T/out"
done
finish
