#!/usr/bin/env bash
# --async-ckpt: the checkpoints are bitwise those of synchronous saves (PP 1, PP 2, PP 2 x DP 2),
# training goes on while the background write runs (a slowed write commits steps after its
# checkpoint step, and the next checkpoint waits for it), the end of the run and a stop signal
# wait for the save in flight and commit it, SIGKILL during the background write leaves the
# previous checkpoint valid and resumable, and a failed background write fails the run with the
# synchronous save's error, committing nothing.
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"
base=(--preset tiny --data selective-copy --copy-tokens 4 --copy-slots 12 --microbatches 4 --microbatch-size 2
      --seed 5 --ckpt-every 4 --quiet --timeout 20)
common=("${base[@]}" --steps 12)
step_dir() { printf '%s/step-%08d' "$1" "$2"; }

# The metrics of an async run of 12 steps with a checkpoint every 4: steps 4 and 8 are
# snapshotted at their step (no synchronous ckpt_time_s there) and committed later, at the
# latest by the next checkpoint (at most one save in flight), step 8's by the end of the run;
# step 12 is saved synchronously. With MIN_LAG=2 a commit comes at least 2 steps after its
# snapshot: at least one whole step ran while the write was in flight.
check_async_metrics() {
  python3 - "$1" "$2" <<'PY'
import json, sys
rows = {j["step"]: j for j in map(json.loads, open(sys.argv[1])) if "loss" in j}
min_lag = int(sys.argv[2])
assert sorted(rows) == list(range(1, 13)), sorted(rows)
commits = {j["ckpt_committed"]: s for s, j in rows.items() if "ckpt_committed" in j}
for k in (4, 8):
    j = rows[k]
    assert "ckpt_snapshot_s" in j and "ckpt_time_s" not in j, j
    c = commits.get(k)
    assert c is not None and k + min_lag <= c <= k + 4, (k, c, commits)
    assert rows[c]["ckpt_write_s"] >= 0 and rows[c]["ckpt_commit_s"] >= 0, rows[c]
assert sorted(commits) == [4, 8], commits
assert "ckpt_time_s" in rows[12] and "ckpt_snapshot_s" not in rows[12], rows[12]
assert not any("ckpt_snapshot_s" in rows[s] for s in rows if s not in (4, 8)), rows
PY
}

# --- bitwise the synchronous run's checkpoints, every one of them, at every layout; at PP 2 the
# write of rank 1 is slowed (PMAMBA_FAULT=slow-write@1), so training runs while it is in flight ---
for layout in "1 1" "2 1" "2 2"; do
  set -- $layout; pp=$1; dp=$2; name=p${pp}d${dp}
  run "$BIN/pmamba-train" "${common[@]}" --pp "$pp" --dp "$dp" --ckpt-dir "$T/s$name"; expect_code 0
  fault=""; lag=1
  if [ "$name" = p2d1 ]; then fault=slow-write@1; lag=2; fi
  PMAMBA_FAULT=$fault run "$BIN/pmamba-train" "${common[@]}" --pp "$pp" --dp "$dp" --async-ckpt --ckpt-dir "$T/a$name"
  expect_code 0
  for s in 4 8 12; do
    run "$BIN/pmamba-ckpt" diff "$(step_dir "$T/a$name" $s)" "$(step_dir "$T/s$name" $s)"; expect_code 0
  done
  run "$BIN/pmamba-ckpt" diff "$T/a$name" "$T/s$name"; expect_code 0; expect_out "EQUAL"
  [ "$(cat "$T/a$name/latest")" = step-00000012 ] || fail "$name: latest is $(cat "$T/a$name/latest")"
  LAST_CMD="metrics of the async run $name"
  check_async_metrics "$T/a$name/metrics.jsonl" $lag || fail "$name: the async saves were not committed as expected"
done

# --- SIGTERM while a (slowed) save is in flight: the stop waits for it, commits it, then commits
# the stop's own step and says so ---
PMAMBA_FAULT=slow-write "$BIN/pmamba-train" "${base[@]}" --steps 4000 --pp 2 --async-ckpt --ckpt-dir "$T/G" \
    >"$T/g.out" 2>"$T/g.err" &
PID=$!
for _ in $(seq 1 400); do grep -qs ckpt_snapshot_s "$T/G/metrics.jsonl" && break; sleep 0.05; done
kill -TERM $PID; wait $PID; CODE=$?; LAST_CMD="SIGTERM during the background write"; expect_code 0
N=$(sed -n 's/.*stopped by SIGTERM after step \([0-9]*\): committed .*/\1/p' "$T/g.out")
[ -n "$N" ] && [ "$N" -gt 4 ] || fail "no stop after step 4 was reported: $(cat "$T/g.out" "$T/g.err")"
grep -q "stopped by SIGTERM after step $N: committed $(step_dir "$T/G" "$N")" "$T/g.out" || fail "$(tail -2 "$T/g.out")"
[ "$(cat "$T/G/latest")" = "$(basename "$(step_dir "$T/G" "$N")")" ] || fail "latest is $(cat "$T/G/latest") after a stop at $N"
python3 - "$T/G/metrics.jsonl" "$N" <<'PY' || fail "the stop step did not commit the save in flight"
import json, sys
rows = {j["step"]: j for j in map(json.loads, open(sys.argv[1])) if "loss" in j}
n = int(sys.argv[2])
assert "ckpt_snapshot_s" in rows[4] and rows[n].get("ckpt_committed") == 4 and "ckpt_time_s" in rows[n], rows[n]
PY
run "$BIN/pmamba-ckpt" verify "$(step_dir "$T/G" 4)"; expect_code 0
run "$BIN/pmamba-ckpt" verify "$T/G"; expect_code 0

# --- SIGKILL during the background write (stage 1 dies once its shard is written, before the
# fsync; at PP 1 after its first dataset): the previous checkpoint is the valid one, and resuming
# from it ends bitwise where the uninterrupted run ended ---
for case in "2 shard-written@1" "1 shard-partial@0"; do
  set -- $case; pp=$1; point=$2; name=k$pp
  run "$BIN/pmamba-train" "${common[@]}" --pp "$pp" --stop-after 4 --ckpt-dir "$T/$name"; expect_code 0
  PMAMBA_FAULT=$point run "$BIN/pmamba-train" "${common[@]}" --pp "$pp" --async-ckpt --resume auto --ckpt-dir "$T/$name"
  [ "$CODE" -ne 0 ] || fail "$name: the run survived PMAMBA_FAULT=$point"
  [ "$(cat "$T/$name/latest")" = step-00000004 ] || fail "$name: latest is $(cat "$T/$name/latest")"
  [ -e "$(step_dir "$T/$name" 8)" ] && fail "$name: step 8 was committed by a killed save"
  run "$BIN/pmamba-ckpt" verify "$T/$name"; expect_code 0
  run "$BIN/pmamba-train" "${common[@]}" --pp "$pp" --async-ckpt --resume auto --ckpt-dir "$T/$name"; expect_code 0
  run "$BIN/pmamba-ckpt" diff "$T/$name" "$T/sp${pp}d1"; expect_code 0
done

# --- a background write that fails (its thread pool cannot start a thread) fails the run with the
# synchronous save's error and exit code, and commits nothing ---
for mode in sync async; do
  extra=(); [ $mode = async ] && extra=(--async-ckpt)
  PMAMBA_FAULT=thread@1 run "$BIN/pmamba-train" "${common[@]}" --threads 2 "${extra[@]}" --ckpt-dir "$T/f$mode"
  cp "$T/err" "$T/f$mode.err"; echo "$CODE" >"$T/f$mode.code"
  expect_err "checkpoint of step 4 failed: "
  [ -z "$(ls "$T/f$mode" | grep step-)" ] || fail "$mode: a failed save left $(ls "$T/f$mode")"
done
[ "$(cat "$T/fasync.code")" = "$(cat "$T/fsync.code")" ] && [ "$(cat "$T/fsync.code")" != 0 ] ||
    fail "exit codes: sync $(cat "$T/fsync.code"), async $(cat "$T/fasync.code")"
[ "$(tail -1 "$T/fasync.err")" = "$(tail -1 "$T/fsync.err")" ] ||
    fail "the errors differ: sync '$(tail -1 "$T/fsync.err")', async '$(tail -1 "$T/fasync.err")'"
finish
