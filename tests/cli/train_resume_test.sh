#!/usr/bin/env bash
# Resume at another PP degree continues bit-identically: 2K steps at PP 2 uninterrupted equal
# K steps at PP 2 -> pmamba-reshard --pp 3 -> K more steps at PP 3, and equal a direct --resume
# of the PP 2 checkpoint at PP 3 (load-time resharding), and --resume auto at PP 1.
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"
common=(--data selective-copy --copy-tokens 4 --copy-slots 12 --schedule 1f1b --microbatches 3
        --microbatch-size 2 --steps 8 --warmup 2 --seed 11 --ckpt-every 4 --quiet --timeout 60)
run "$BIN/pmamba-train" --preset tiny "${common[@]}" --pp 2 --ckpt-dir "$T/u" --metrics "$T/u.jsonl"; expect_code 0
run "$BIN/pmamba-train" --preset tiny "${common[@]}" --pp 2 --stop-after 4 --ckpt-dir "$T/a"; expect_code 0
[ "$(cat "$T/a/latest")" = "step-00000004" ] || fail "the preempted run did not stop at step 4"
run "$BIN/pmamba-reshard" "$T/a" "$T/a3" --pp 3 --partition 2,1,1 --quiet; expect_code 0
run "$BIN/pmamba-train" --preset tiny "${common[@]}" --pp 3 --partition 2,1,1 --resume "$T/a3" --ckpt-dir "$T/a3" --metrics "$T/a3.jsonl"
expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/a3" "$T/u"; expect_code 0; expect_out "EQUAL"
python3 - "$T/u.jsonl" "$T/a3.jsonl" <<'PY' || fail "resumed metrics differ from the uninterrupted run"
import json, sys
u = {j["step"]: j for j in map(json.loads, open(sys.argv[1])) if "loss" in j}
r = [j for j in map(json.loads, open(sys.argv[2])) if "loss" in j]
assert [j["step"] for j in r] == [5, 6, 7, 8], [j["step"] for j in r]
for j in r:
    assert (j["loss"], j["grad_norm"], j["lr"]) == (u[j["step"]]["loss"], u[j["step"]]["grad_norm"], u[j["step"]]["lr"]), j
PY
# Loading the PP 2 checkpoint directly at PP 3 (and at PP 1 with --resume auto).
run "$BIN/pmamba-train" --preset tiny "${common[@]}" --pp 3 --partition 0,3,1 --resume "$T/a" --ckpt-dir "$T/d"; expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/d" "$T/u"; expect_code 0
cp -r "$T/a" "$T/auto"
run "$BIN/pmamba-train" --preset tiny "${common[@]}" --pp 1 --resume auto --ckpt-dir "$T/auto"; expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/auto" "$T/u"; expect_code 0
# The run's settings come back from the checkpoint: a resume that names none of them (no data,
# seed, LR schedule or batch options) continues the same run.
run "$BIN/pmamba-train" --pp 3 --resume "$T/a" --ckpt-dir "$T/bare" --quiet --timeout 60; expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/bare" "$T/u"; expect_code 0
python3 - "$T/bare" "$T/u" <<'PY' || fail "the resumed run's training state differs from the uninterrupted run's"
import json, os, sys
def train(root):
    step = open(os.path.join(root, "latest")).read().strip()
    return json.load(open(os.path.join(root, step, "manifest.json")))["train"]
a, b = train(sys.argv[1]), train(sys.argv[2])
# Where each run's metrics file lies is not a run setting (this one was given --metrics).
assert a.pop("metrics") == "metrics.jsonl" and b.pop("metrics").endswith("u.jsonl"), (a, b)
assert a == b, (a, b)
assert a["step"] == 8 and a["seed"] == 11 and a["lr_schedule"]["warmup"] == 2 and a["batch"]["samples_per_step"] == 6, a
PY
# The same for a bf16-autocast run: the bare resume keeps computing under autocast.
run "$BIN/pmamba-train" --preset tiny "${common[@]}" --pp 2 --autocast bf16 --ckpt-dir "$T/ub"; expect_code 0
run "$BIN/pmamba-train" --preset tiny "${common[@]}" --pp 2 --autocast bf16 --stop-after 4 --ckpt-dir "$T/ab"; expect_code 0
run "$BIN/pmamba-train" --pp 3 --resume "$T/ab" --ckpt-dir "$T/bb" --quiet --timeout 60; expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/bb" "$T/ub"; expect_code 0
# A given option that contradicts the run is refused before anything runs; the batch may be split
# differently (same samples per step) but not resized.
run "$BIN/pmamba-train" --pp 1 --resume "$T/a" --ckpt-dir "$T/e" --lr 0.01
expect_code 2; expect_err "--lr 0.01 differs from the run resumed from"
run "$BIN/pmamba-train" --pp 1 --resume "$T/a" --ckpt-dir "$T/e" --steps 20
expect_code 2; expect_err "--steps 20 differs"
run "$BIN/pmamba-train" --pp 1 --resume "$T/a" --ckpt-dir "$T/e" --copy-tokens 5
expect_code 2; expect_err "--copy-tokens 5 differs"
run "$BIN/pmamba-train" --pp 1 --resume "$T/a" --ckpt-dir "$T/e" --microbatches 4
expect_code 2; expect_err "samples per step"
[ -e "$T/e" ] && fail "a refused resume wrote '$T/e'"
run "$BIN/pmamba-train" --pp 2 --resume "$T/a" --ckpt-dir "$T/split" --microbatches 6 --microbatch-size 1 --quiet
expect_code 0
[ "$(cat "$T/split/latest")" = "step-00000008" ] || fail "the re-split resume did not reach step 8"
# A resumed run refuses a model other than the checkpoint's.
run "$BIN/pmamba-train" "${common[@]}" --preset small --pp 1 --resume "$T/a" --ckpt-dir "$T/e"
expect_code 2; expect_err "different model"
finish
