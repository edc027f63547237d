#!/usr/bin/env bash
# PP = N vs PP = 1, multi-process on loopback Gloo: K training steps from the same seed with the
# same schedule and microbatches give bitwise-equal per-step losses and grad norms and equal final
# checkpoints (pmamba-ckpt diff exits 0), for gpipe and 1f1b, packed and summed boundaries, tied
# and untied embeddings.   Usage: train_equiv_test.sh BIN_DIR PP PARTITION
set -u
BIN=$1
PP=$2
PART=$3
source "$(dirname "$0")/lib.sh"
K=3
printf '{"d_model": 32, "n_layer": 4, "vocab_size": 64, "d_state": 8, "tie_embeddings": false}' > "$T/untied.json"
common=(--data selective-copy --copy-tokens 4 --copy-slots 12 --microbatches 4 --microbatch-size 2
        --steps 10 --warmup 2 --stop-after $K --seed 5 --ckpt-every $K --compression none --quiet --timeout 60)
for tie in tied untied; do
  model=(--preset tiny); [ $tie = untied ] && model=(--config "$T/untied.json")
  for sched in gpipe 1f1b; do
    ref=$T/ref-$tie-$sched
    run "$BIN/pmamba-train" "${model[@]}" "${common[@]}" --schedule $sched --pp 1 --ckpt-dir $ref --metrics $ref.jsonl
    expect_code 0
    for boundary in packed summed; do
      out=$T/pp$PP-$tie-$sched-$boundary
      run "$BIN/pmamba-train" "${model[@]}" "${common[@]}" --schedule $sched --boundary $boundary --pp $PP \
          --partition "$PART" --ckpt-dir $out --metrics $out.jsonl
      expect_code 0
      # Per-step loss and grad norm, compared as the exact doubles printed in the JSON lines.
      python3 - "$ref.jsonl" "$out.jsonl" <<'PY' || fail "metrics differ for $out"
import json, sys
a = [j for j in map(json.loads, open(sys.argv[1])) if "loss" in j]
b = [j for j in map(json.loads, open(sys.argv[2])) if "loss" in j]
assert len(a) == len(b) == 3, (len(a), len(b))
for x, y in zip(a, b):
    for k in ("step", "loss", "grad_norm", "accuracy", "lr"):
        assert x[k] == y[k], (k, x[k], y[k])
PY
      run "$BIN/pmamba-ckpt" diff $ref $out
      expect_code 0
      expect_out "EQUAL"
    done
  done
done
# bf16 autocast: still bitwise PP = N vs PP = 1, and really in bf16 (the losses move off float32's).
ref=$T/ref-bf16
run "$BIN/pmamba-train" --preset tiny "${common[@]}" --schedule 1f1b --autocast bf16 --pp 1 --ckpt-dir $ref --metrics $ref.jsonl
expect_code 0
for boundary in packed summed; do
  out=$T/pp$PP-bf16-$boundary
  run "$BIN/pmamba-train" --preset tiny "${common[@]}" --schedule 1f1b --autocast bf16 --boundary $boundary --pp $PP \
      --partition "$PART" --ckpt-dir $out --metrics $out.jsonl
  expect_code 0
  cmp <(python3 -c 'import json,sys; [print(j["loss"], j["grad_norm"]) for j in map(json.loads, open(sys.argv[1])) if "loss" in j]' $ref.jsonl) \
      <(python3 -c 'import json,sys; [print(j["loss"], j["grad_norm"]) for j in map(json.loads, open(sys.argv[1])) if "loss" in j]' $out.jsonl) \
      || fail "bf16 metrics differ for $out"
  run "$BIN/pmamba-ckpt" diff $ref $out
  expect_code 0
done
python3 - "$ref.jsonl" "$T/ref-tied-1f1b.jsonl" <<'PY' || fail "bf16 autocast gave the float32 losses: it did not take effect"
import json, sys
a = [j["loss"] for j in map(json.loads, open(sys.argv[1])) if "loss" in j]
b = [j["loss"] for j in map(json.loads, open(sys.argv[2])) if "loss" in j]
assert len(a) == len(b) == 3 and a != b, (a, b)
PY
finish
