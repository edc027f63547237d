#!/usr/bin/env bash
# One writer per checkpoint root, and no tool may destroy another run: the root's lock, run
# ids (a new run refused in another run's root, --overwrite, --resume auto), init into a run's
# root, outputs inside their inputs, --resume DIR without --ckpt-dir, a run that saves nothing
# saying so, a filesystem without locks.
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"
common=(--preset tiny --data selective-copy --copy-tokens 4 --copy-slots 12 --microbatches 2 --microbatch-size 2
        --timeout 5 --quiet)
run_id() {  # the run id of a root's newest checkpoint
  python3 -c 'import json, os, sys
r = sys.argv[1]
print(json.load(open(os.path.join(r, open(os.path.join(r, "latest")).read().strip(), "manifest.json")))["run_id"])' "$1"
}
run_ids() {  # every run id found in a root's step directories, sorted, unique
  python3 -c 'import glob, json, sys
print(" ".join(sorted({json.load(open(m))["run_id"] for m in glob.glob(sys.argv[1] + "/step-*/manifest.json")})))' "$1"
}

# --- two trainings into one root: the second is refused at once, naming the lock's holder ---
"$BIN/pmamba-train" "${common[@]}" --steps 40 --ckpt-every 1 --ckpt-dir "$T/R" >"$T/first.out" 2>"$T/first.err" &
FIRST=$!
for _ in $(seq 1 300); do [ -f "$T/R/latest" ] && break; sleep 0.1; done
start=$(date +%s)
run "$BIN/pmamba-train" "${common[@]}" --steps 40 --seed 2 --ckpt-dir "$T/R"
[ $(( $(date +%s) - start )) -le 5 ] || fail "the second training was not refused at once"
expect_code 2
expect_err "is being written by another process (pid $FIRST on host"
expect_err "(pmamba-train, since"
wait $FIRST || fail "the first training failed: $(tail -3 "$T/first.err")"
run "$BIN/pmamba-ckpt" verify "$T/R"; expect_code 0
[ "$(run_ids "$T/R")" = "$(run_id "$T/R")" ] || fail "the root holds more than one run: $(run_ids "$T/R")"
# The same at PP 2: the launcher holds the lock, and so does stage 0, which commits.
"$BIN/pmamba-train" "${common[@]}" --steps 40 --ckpt-every 1 --pp 2 --ckpt-dir "$T/R2" >/dev/null 2>"$T/r2.err" &
LAUNCHER=$!
for _ in $(seq 1 300); do [ -f "$T/R2/latest" ] && break; sleep 0.1; done
run "$BIN/pmamba-reshard" "$T/R" "$T/R2" --pp 1 --force; expect_code 2; expect_err "is being written by another process (pid $LAUNCHER"
run "$BIN/pmamba-ckpt" init "$T/R2" --preset tiny; expect_code 2; expect_err "is being written by another process"
wait $LAUNCHER || fail "the PP 2 training failed: $(tail -3 "$T/r2.err")"

# --- init into a root that holds a run is refused and leaves it alone ---
before=$(cat "$T/R/latest")
run "$BIN/pmamba-ckpt" init "$T/R" --preset tiny --seed 3; expect_code 2; expect_err "is not empty (it holds checkpoints of run"
[ "$(cat "$T/R/latest")" = "$before" ] || fail "init repointed latest to $(cat "$T/R/latest")"
run "$BIN/pmamba-ckpt" init "$T/I" --preset tiny --seed 3; expect_code 0
[ "$(run_id "$T/I")" != "$(run_id "$T/R")" ] || fail "init did not start a run of its own"

# --- a new run into another run's root is refused; --resume auto continues it; --overwrite replaces it ---
run "$BIN/pmamba-train" "${common[@]}" --steps 6 --stop-after 3 --ckpt-every 1 --ckpt-dir "$T/A" --metrics "$T/a.jsonl"
expect_code 0
RID=$(run_id "$T/A")
[ "$(python3 -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline())["run_id"])' "$T/a.jsonl")" = "$RID" ] ||
    fail "the metrics header does not carry the run id $RID: $(head -1 "$T/a.jsonl")"
run "$BIN/pmamba-train" "${common[@]}" --steps 6 --seed 9 --ckpt-dir "$T/A"; expect_code 2
expect_err_line "holds checkpoints of another run (run $RID)"
run "$BIN/pmamba-train" "${common[@]}" --resume auto --ckpt-dir "$T/A"; expect_code 0
[ "$(cat "$T/A/latest")" = step-00000006 ] || fail "--resume auto did not continue the run to step 6"
[ "$(run_ids "$T/A")" = "$RID" ] || fail "the resumed run changed its run id: $(run_ids "$T/A")"
run "$BIN/pmamba-train" "${common[@]}" --steps 2 --seed 9 --ckpt-dir "$T/A" --overwrite; expect_code 0
NEW=$(run_id "$T/A")
[ "$NEW" != "$RID" ] || fail "--overwrite kept the old run id"
[ "$(run_ids "$T/A")" = "$NEW" ] || fail "--overwrite left the other run's checkpoints: $(run_ids "$T/A")"
ls "$T/A" | grep -q "step-00000006" && fail "the replaced run's step 6 is still there"

# --- --resume DIR without --ckpt-dir keeps writing into DIR ---
run "$BIN/pmamba-train" "${common[@]}" --steps 4 --stop-after 2 --ckpt-dir "$T/B"; expect_code 0
run "$BIN/pmamba-train" --resume "$T/B" --quiet --timeout 5; expect_code 0
[ "$(cat "$T/B/latest")" = step-00000004 ] || fail "--resume DIR alone did not write into DIR (latest: $(cat "$T/B/latest"))"
# A resume into a third root that holds another run is refused like a new run.
run "$BIN/pmamba-train" --resume "$T/B" --ckpt-dir "$T/I" --quiet --timeout 5; expect_code 2
expect_err "holds checkpoints of another run"

# --- a run that saves no checkpoint says so on its first line ---
run "$BIN/pmamba-train" "${common[@]}" --steps 1; expect_code 0
[ "$(head -1 "$T/out")" = "pmamba-train: note: no --ckpt-dir: this run saves no checkpoint" ] || fail "first line: $(head -1 "$T/out")"
run "$BIN/pmamba-train" "${common[@]}" --steps 1 --pp 2; expect_code 0
[ "$(head -1 "$T/out")" = "pmamba-train: note: no --ckpt-dir: this run saves no checkpoint" ] || fail "first line at PP 2: $(head -1 "$T/out")"

# --- outputs may not be, lie inside or contain their inputs, nor lie inside a checkpoint ---
for out in "$T/B" "$T/B/sub" "$T/B/step-00000004" "$T/B/../B/new" "$T"; do
  run "$BIN/pmamba-reshard" "$T/B" "$out" --pp 2; expect_code 2
done
[ -e "$T/B/sub" ] || [ -e "$T/B/new" ] && fail "a refused reshard created its output"
run "$BIN/pmamba-reshard" "$T/B/step-00000004" "$T/B" --pp 2; expect_code 2; expect_err_line "the input checkpoint"
run "$BIN/pmamba-reshard" "$T/B" "$T/B/sub" --pp 2; expect_code 2; expect_err_line "lies inside the checkpoint root"
run "$BIN/pmamba-train" "${common[@]}" --steps 1 --ckpt-dir "$T/B/step-00000004"; expect_code 2
expect_err_line "is a checkpoint's step directory"
run "$BIN/pmamba-train" "${common[@]}" --steps 1 --ckpt-dir "$T/B/step-00000004/x"; expect_code 2
run "$BIN/pmamba-train" "${common[@]}" --steps 1 --ckpt-dir "$T/B/new"; expect_code 2
expect_err_line "lies inside the checkpoint root"
run "$BIN/pmamba-ckpt" init "$T/B/new" --preset tiny; expect_code 2
[ -e "$T/B/new" ] || [ -e "$T/B/step-00000004/x" ] && fail "a refused writer created its output"
# A reshard keeps the run id of its input.
run "$BIN/pmamba-reshard" "$T/B" "$T/B3" --pp 3 --quiet; expect_code 0
[ "$(run_id "$T/B3")" = "$(run_id "$T/B")" ] || fail "reshard changed the run id"

# --- a filesystem without locks (flock fails with ENOLCK) is refused, naming it ---
PMAMBA_FAULT=flock run "$BIN/pmamba-train" "${common[@]}" --steps 1 --ckpt-dir "$T/F"; expect_code 2
expect_err_line "does not support flock"
[ -e "$T/F" ] && fail "a refused run left its root behind"
finish
