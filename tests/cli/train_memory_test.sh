#!/usr/bin/env bash
# The measured activation high-water mark follows the schedule: with 8 microbatches at PP 2,
# GPipe keeps all 8 microbatches' activations alive on each stage, 1F1B at most 2 on stage 0
# and 1 on stage 1, so GPipe's peaks must be well above 1F1B's (theory: 4x and 8x; asserted 2x).
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"
# Under AddressSanitizer malloc is ASan's, and mallinfo2 (what the peak is measured with) reports 0.
[ -z "${PMAMBA_SANITIZED:-}" ] || { echo "SKIPPED: activation peaks are not measurable under ASan"; exit 77; }
printf '{"d_model": 64, "n_layer": 2, "vocab_size": 64, "d_state": 16}' > "$T/model.json"
for s in gpipe 1f1b; do
  run "$BIN/pmamba-train" --config "$T/model.json" --data selective-copy --microbatch-size 8 --microbatches 8 \
      --steps 3 --seed 1 --threads 1 --quiet --pp 2 --schedule $s --metrics "$T/$s.jsonl"
  expect_code 0
done
python3 - "$T/gpipe.jsonl" "$T/1f1b.jsonl" <<'PY' || fail "activation peaks do not follow the schedules"
import json, statistics, sys
def peaks(path):
    rows = [j for j in map(json.loads, open(path)) if "loss" in j]
    return [statistics.median(r["act_peak_bytes"][s] for r in rows) for s in range(2)]
g, f = peaks(sys.argv[1]), peaks(sys.argv[2])
print("gpipe", g, "1f1b", f)
assert min(g + f) > 0, "a stage measured no activations"
assert g[0] > 2 * f[0] and g[1] > 2 * f[1], "GPipe does not hold clearly more activations than 1F1B"
PY
finish
