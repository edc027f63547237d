#!/usr/bin/env bash
# The training workflow on real token data: a Megatron indexed dataset (the committed fixture
# made by scripts/tokenize.py), a held-out split of whole documents, validation during training
# that is bitwise the same at PP 1 and PP 3, batched evaluation of the checkpoint on that split,
# explicit options that override what the checkpoint recorded, and the refusals.
BIN=$1
source "$(dirname "$0")/lib.sh"
FIX=$PMAMBA_SOURCE_DIR/tests/fixtures/data
printf '{"d_model": 16, "n_layer": 3, "vocab_size": 256, "d_state": 4}' > "$T/m.json"
common=(--config "$T/m.json" --data "$FIX/tok" --eval-fraction 0.1 --eval-every 4 --eval-samples 6 --seq-len 32
        --steps 12 --microbatches 2 --microbatch-size 2 --threads 1 --timeout 30)

# --- validation during training: three evaluations, the same bits at PP 1 and PP 3 ---
run "$BIN/pmamba-train" "${common[@]}" --ckpt-dir "$T/r1"; expect_code 0
expect_out "20 documents held out"  # 10% of 199, whole documents
[ "$(grep -c '^eval step' "$T/out")" = 3 ] || fail "expected 3 eval lines, got $(grep -c '^eval step' "$T/out")"
expect_out "pmamba-train: done: 12 steps"
expect_out "last checkpoint  $T/r1/step-00000012"
run "$BIN/pmamba-train" "${common[@]}" --pp 3 --ckpt-dir "$T/r3"; expect_code 0
# Two data-parallel replicas split the 3 validation microbatches (one padded, masked out).
run "$BIN/pmamba-train" "${common[@]}" --pp 2 --dp 2 --ckpt-dir "$T/r22"; expect_code 0
for r in r1 r3 r22; do
  [ -f "$T/$r/metrics.jsonl" ] || fail "no metrics.jsonl in the run directory $r"
done
python3 - "$T/r1/metrics.jsonl" "$T/r3/metrics.jsonl" "$T/r22/metrics.jsonl" <<'PY' || fail "metrics"
import json, sys
def evals(path):
    lines = [json.loads(l) for l in open(path)]
    head, steps = lines[0], lines[1:]
    assert "step" not in head and head["run_id"] and head["versions"]["libtorch"] and head["config"]["vocab_size"] == 256, head
    assert head["options"]["data"]["eval_fraction"] == 0.1, head["options"]
    assert all("time" in s for s in steps), "a step line without a timestamp"
    assert [s["step"] for s in steps] == list(range(1, 13)), [s["step"] for s in steps]
    ev = [(s["step"], s["eval_loss"], s["eval_accuracy"], s["eval_ppl"]) for s in steps if "eval_loss" in s]
    assert [e[0] for e in ev] == [4, 8, 12], ev
    assert all("eval_loss" not in s for s in steps if s["step"] % 4), "eval_loss on a step that did not evaluate"
    return ev
one, three, dp = evals(sys.argv[1]), evals(sys.argv[2]), evals(sys.argv[3])
# json floats round-trip exactly: equal values are equal bits
assert one == three, (one, three)
assert one == dp, (one, dp)
PY
run "$BIN/pmamba-ckpt" diff "$T/r1" "$T/r3"; expect_code 0; expect_out "EQUAL"
run "$BIN/pmamba-ckpt" info "$T/r1" --json; expect_code 0; expect_out '"metrics":"metrics.jsonl"'

# --- pmamba-eval on the recorded split: the last eval_loss of training, at any batch size ---
last=$(python3 -c 'import json,sys; print(repr([json.loads(l) for l in open(sys.argv[1])][-1]["eval_loss"]))' "$T/r1/metrics.jsonl")
for b in 1 2 7 64; do
  run "$BIN/pmamba-eval" --ckpt "$T/r1" --samples 6 --batch-size $b --json --threads 1; expect_code 0
  python3 - "$T/out" "$last" "$b" <<'PY' || fail "eval at batch size $b"
import json, sys
j = json.load(open(sys.argv[1])); want = float(sys.argv[2])
assert j["held_out"] is True and j["samples"] == 6 and j["seq_len"] == 32 and j["step"] == 12, j
assert j["data_from"] == "the checkpoint's training data", j
# Per-sample losses are summed in float64 in sample order; the logits of a sample are not
# batch-invariant in OpenBLAS on this machine (other shapes, other kernels), hence 1e-6.
assert abs(j["loss"] - want) <= 1e-6 * want, (j["loss"], want)
assert abs(j["perplexity"] - 2.718281828459045 ** j["loss"]) < 1e-9 * j["perplexity"]
PY
done
# The same loss as 3 processes, and every held-out window with --all.
run "$BIN/pmamba-eval" --ckpt "$T/r1" --samples 6 --batch-size 2 --pp 3 --threads 1; expect_code 0
expect_out "samples 6 of "; expect_out "from the held-out documents"
run "$BIN/pmamba-eval" --ckpt "$T/r1" --all --batch-size 5 --threads 1 --json; expect_code 0
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["samples"] > 6, j' "$T/out" || fail "--all"

# --- explicit options win over the checkpoint's, and the header says so ---
run "$BIN/pmamba-eval" --ckpt "$T/r1" --seq-len 48 --samples 3 --logits-out "$T/l48.h5" --threads 1; expect_code 0
expect_out "windows of 48"; expect_out "tokens 48"
h5ls "$T/l48.h5" | grep -q "{3, 48, 256}" || fail "logits at --seq-len 48: $(h5ls "$T/l48.h5")"
run "$BIN/pmamba-train" --preset tiny --data selective-copy --steps 2 --ckpt-dir "$T/sc" --quiet --threads 1; expect_code 0
run "$BIN/pmamba-eval" --ckpt "$T/sc" --data selective-copy --copy-slots 20 --samples 4 --logits-out "$T/sc.h5"; expect_code 0
expect_out "8 tokens among 20 slots"
h5ls "$T/sc.h5" | grep -q "{4, 36, 64}" || fail "logits at --copy-slots 20: $(h5ls "$T/sc.h5")"
run "$BIN/pmamba-eval" --ckpt "$T/sc" --data selective-copy --samples 4 --json; expect_code 0
SEED0=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["data"]["seed"], j["loss"])' "$T/out")
run "$BIN/pmamba-eval" --ckpt "$T/sc" --data selective-copy --samples 4 --data-seed 99 --json; expect_code 0
SEED99=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["data"]["seed"], j["loss"])' "$T/out")
[ "${SEED99%% *}" = 99 ] && [ "$SEED0" != "$SEED99" ] || fail "--data-seed 99 not used: '$SEED0' vs '$SEED99'"

# --- bounded memory: 10x the samples, not 10x the memory ---
rss() { /usr/bin/time -f "%M" "$@" 2>&1 >/dev/null | tail -1; }
small=$(rss "$BIN/pmamba-eval" --ckpt "$T/sc" --data selective-copy --samples 1000 --batch-size 256 --threads 2)
large=$(rss "$BIN/pmamba-eval" --ckpt "$T/sc" --data selective-copy --samples 10000 --batch-size 256 --threads 2)
[ "$large" -lt $((small + 40000)) ] || fail "peak RSS grew from $small KB (1,000 samples) to $large KB (10,000)"

# --- what cannot apply is refused, with the reason ---
run "$BIN/pmamba-eval" --ckpt "$T/sc" --data selective-copy --seq-len 64; expect_code 2
expect_err_line "--seq-len does not apply to selective-copy"
run "$BIN/pmamba-eval" --ckpt "$T/sc" --data induction --copy-slots 9; expect_code 2
expect_err_line "--copy-slots applies to --data selective-copy only"
run "$BIN/pmamba-eval" --ckpt "$T/sc" --tokens 1,2,3 --samples 5; expect_code 2
expect_err_line "--samples applies to --data"
run "$BIN/pmamba-eval" --ckpt "$T/sc" --data selective-copy --all; expect_code 2
expect_err_line "--all needs a bounded evaluation set"
run "$BIN/pmamba-eval" --ckpt "$T/r1" --samples 100000; expect_code 2
expect_err_line "but the evaluation set holds"
run "$BIN/pmamba-eval" --ckpt "$T/sc" --data selective-cpy; expect_code 2
expect_err_line "did you mean selective-copy?"
printf 'hello world, a small text file for a held-out split\n%.0s' {1..40} > "$T/t.txt"
run "$BIN/pmamba-train" --config "$T/m.json" --data "text:$T/t.txt" --eval-every 2 --steps 2 --seq-len 16; expect_code 2
expect_err_line "--eval-every needs held-out data"
run "$BIN/pmamba-train" --preset tiny --data "$FIX/tok" --steps 2; expect_code 2
expect_err_line "needs a vocabulary of 256 but the model has vocab_size 64"
run "$BIN/pmamba-train" --config "$T/m.json" --data "$FIX/tok" --eval-fraction 0.999 --steps 2; expect_code 2
expect_err_line "leaves none for training"
# A resumed run keeps its split.
run "$BIN/pmamba-train" --data "$FIX/tok" --eval-fraction 0.2 --resume auto --ckpt-dir "$T/r1" --steps 12; expect_code 2
expect_err_line "--eval-fraction 0.2 differs from the run resumed from"

# --- a text file's held-out end: validation on it, reported in bits per byte ---
run "$BIN/pmamba-train" --config "$T/m.json" --data "text:$T/t.txt" --eval-fraction 0.25 --eval-every 2 --eval-samples 4 \
    --steps 2 --seq-len 16 --threads 1; expect_code 0
expect_out "bits/byte"

finish
