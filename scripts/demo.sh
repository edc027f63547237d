#!/usr/bin/env bash
# The main job as it stands: run the tiny model as 1, 3 and 5 pipeline stages (packed and
# summed boundaries) and show that every layout produces the same logits, bit for bit.
set -euo pipefail
BUILD=${1:-build}
BIN=$BUILD/bin
OUT=$(mktemp -d "${TMPDIR:-/tmp}/pmamba-demo-XXXXXX")
trap 'rm -rf "$OUT"' EXIT
TOKENS=1,5,9,13,17,21,25,29,33,37,41,45

echo "== pmamba demo: one model, many pipeline layouts, identical logits =="
"$BIN/pmamba-eval" --preset tiny --seed 7 --pp 1 --tokens $TOKENS --logits-out "$OUT/pp1.h5"
for spec in "3 0,3,1 packed" "3 0,3,1 summed" "5 1,1,1,1,0 packed" "2 4,0 summed"; do
  set -- $spec
  "$BIN/pmamba-eval" --preset tiny --seed 7 --pp "$1" --partition "$2" --boundary "$3" \
    --tokens $TOKENS --logits-out "$OUT/pp$1-$2-$3.h5" >/dev/null
  if h5diff -q "$OUT/pp1.h5" "$OUT/pp$1-$2-$3.h5"; then
    echo "pp $1 partition $2 boundary $3: logits identical to pp 1"
  else
    echo "pp $1 partition $2 boundary $3: LOGITS DIFFER" >&2
    exit 1
  fi
done
