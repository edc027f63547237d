#!/usr/bin/env bash
# --async-ckpt: every checkpoint is bitwise the synchronous run's (PP 1 and PP 2; the content does
# not depend on the layout, so one synchronous PP 1 run is the reference), training goes on while
# the background write runs (a slowed write commits steps after its checkpoint step, and the next
# checkpoint waits for it), the end of the run and a stop signal wait for the save in flight and
# commit it, SIGKILL during the background write leaves the previous checkpoint valid and
# resumable, and a failed background write fails the run with the synchronous save's error.
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"
# The policy pmamba-train would restart itself with: set here, it starts once.
export OMP_WAIT_POLICY=passive
base=(--preset tiny --data selective-copy --copy-tokens 4 --copy-slots 12 --microbatches 4 --microbatch-size 2
      --seed 5 --ckpt-every 4 --quiet --timeout 20)
common=("${base[@]}" --steps 12)
step_dir() { printf '%s/step-%08d' "$1" "$2"; }

# Every step directory of root $1 holds what the same step of root $2 holds: the same tensors
# with the same digests (computed by the writer from the bytes it wrote) and the same training state.
same_steps() {
  python3 - "$1" "$2" <<'PY'
import json, os, sys
def steps(root):
    out = {}
    for d in sorted(os.listdir(root)):
        if d.startswith("step-") and ".tmp" not in d:
            m = json.load(open(os.path.join(root, d, "manifest.json")))
            t = {f: {k: (v[k]["xxh3_64"], v[k]["shape"], v[k]["dtype"]) if isinstance(v.get(k), dict) and "xxh3_64" in v[k]
                     else v.get(k) for k in ("param", "exp_avg", "exp_avg_sq", "step", "alias_of")}
                 for f, v in m["tensors"].items()}
            out[d] = (t, m["train"])
    return out
a, b = steps(sys.argv[1]), steps(sys.argv[2])
assert sorted(a) == sorted(b) == ["step-00000004", "step-00000008", "step-00000012"], (sorted(a), sorted(b))
for d in a:
    assert a[d] == b[d], d
PY
}

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

# --- bitwise the synchronous run's checkpoints, every one of them (PP 1 below, after the kill);
# the write of rank 1 is slowed (PMAMBA_FAULT=slow-write@1: 1 s), so training runs while it is
# in flight ---
run "$BIN/pmamba-train" "${common[@]}" --ckpt-dir "$T/s"; expect_code 0
PMAMBA_FAULT=slow-write@1 run "$BIN/pmamba-train" "${common[@]}" --pp 2 --async-ckpt --ckpt-dir "$T/a"
expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/a" "$T/s"; expect_code 0; expect_out "EQUAL"
LAST_CMD="the step directories of the async run at PP 2 against the synchronous run's"
same_steps "$T/a" "$T/s" || fail "an async checkpoint differs from the synchronous one"
[ "$(cat "$T/a/latest")" = step-00000012 ] || fail "latest is $(cat "$T/a/latest")"
LAST_CMD="metrics of the async run at PP 2"
check_async_metrics "$T/a/metrics.jsonl" 2 || fail "the async saves were not committed as expected"

# --- the snapshot is copied in the background while the next step's forward and backward run;
# that step's optimizer update waits for it, so a copy that starts 1 s late
# (PMAMBA_FAULT=slow-snapshot) still holds the state of its own step, bitwise ---
PMAMBA_FAULT=slow-snapshot run "$BIN/pmamba-train" "${common[@]}" --async-ckpt --ckpt-dir "$T/n"; expect_code 0
LAST_CMD="the step directories of the async run with a late snapshot against the synchronous run's"
same_steps "$T/n" "$T/s" || fail "a late background snapshot saved another step's state"
LAST_CMD="metrics of the async run with a late snapshot"
python3 - "$T/n/metrics.jsonl" <<'PY' || fail "the update after a checkpoint did not wait for its snapshot"
import json, sys
rows = {j["step"]: j for j in map(json.loads, open(sys.argv[1])) if "loss" in j}
assert rows[5].get("ckpt_snapshot_wait_s", 0) >= 0.5 and rows[9].get("ckpt_snapshot_wait_s", 0) >= 0.5, (rows[5], rows[9])
PY

# --- SIGTERM while a (slowed) save is in flight: the stop waits for it, commits it, then commits
# the stop's own step and says so ---
PMAMBA_FAULT=slow-write "$BIN/pmamba-train" "${base[@]}" --steps 4000 --async-ckpt --ckpt-dir "$T/G" \
    >"$T/g.out" 2>"$T/g.err" &
PID=$!
for _ in $(seq 1 400); do grep -qs ckpt_snapshot_s "$T/G/metrics.jsonl" && break; sleep 0.05; done
kill -TERM $PID; wait $PID; CODE=$?; LAST_CMD="SIGTERM during the background write"; expect_code 0
N=$(sed -n 's/.*stopped by SIGTERM after step \([0-9]*\): committed .*/\1/p' "$T/g.out")
[ -n "$N" ] && [ "$N" -gt 4 ] || fail "no stop after step 4 was reported: $(cat "$T/g.out" "$T/g.err")"
grep -q "stopped by SIGTERM after step $N: committed $(step_dir "$T/G" "$N")" "$T/g.out" || fail "$(tail -2 "$T/g.out")"
[ "$(cat "$T/G/latest")" = "$(basename "$(step_dir "$T/G" "$N")")" ] || fail "latest is $(cat "$T/G/latest") after a stop at $N"
# Which save is in flight at the stop depends on when the signal lands: step 4's if before step 8,
# whose checkpoint waits for it (steps take milliseconds, the slowed write 1 s), else step 8's.
# Either way the stop step commits the last snapshot taken, then saves itself.
python3 - "$T/G/metrics.jsonl" "$N" <<'PY' || fail "the stop step did not commit the save in flight"
import json, sys
rows = {j["step"]: j for j in map(json.loads, open(sys.argv[1])) if "loss" in j}
n = int(sys.argv[2])
assert "ckpt_snapshot_s" in rows[4], rows[4]
k = max(s for s in rows if s <= n and "ckpt_snapshot_s" in rows[s])
assert rows[n].get("ckpt_committed") == k and "ckpt_time_s" in rows[n], (k, rows[n])
PY
run "$BIN/pmamba-ckpt" verify "$(step_dir "$T/G" 4)"; expect_code 0

# --- --ckpt-priority: the background write runs under SCHED_IDLE by default and at training's
# own policy with `normal` (read from /proc while a slowed write sleeps, 1 s) ---
for prio in idle normal; do
  PMAMBA_FAULT=slow-write "$BIN/pmamba-train" "${common[@]}" --async-ckpt --ckpt-priority $prio \
      --ckpt-dir "$T/P$prio" >"$T/p.out" 2>"$T/p.err" &
  PID=$!
  for _ in $(seq 1 400); do grep -qs ckpt_snapshot_s "$T/P$prio/metrics.jsonl" && break; sleep 0.05; done
  # Thread policies (field 41 of /proc/PID/task/TID/stat; 5 = SCHED_IDLE) over 0.5 s of the sleep.
  IDLE=$(python3 - $PID <<'PY'
import glob, sys, time
seen = 0
for _ in range(10):
    for f in glob.glob(f"/proc/{sys.argv[1]}/task/*/stat"):
        try:
            fields = open(f).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seen = max(seen, int(fields[41 - 3] == "5"))
    time.sleep(0.05)
print(seen)
PY
)
  wait $PID; CODE=$?; LAST_CMD="--ckpt-priority $prio with a slowed write"; expect_code 0
  want=1; [ $prio = normal ] && want=0
  [ "$IDLE" = $want ] || fail "--ckpt-priority $prio: SCHED_IDLE threads seen: $IDLE (want $want)"
done

# --- the commit runs beside training too: with stage 0's background commit slowed
# (PMAMBA_FAULT=slow-commit: 1 s), steps run between the one that found a save's writes done and
# started its commit and the one that concludes it, and the training thread does not wait the
# second; the checkpoint is still the synchronous run's. At idle priority, the default, other
# jobs' load (CI's) starved the background write past the steps to the next checkpoint, which
# then concluded it itself; at normal priority it competes. The run goes on (checkpoints 200
# steps, ~2 s, apart) until one save's commit was found and concluded by the steps between,
# and is then stopped. ---
slow=(--preset tiny --data selective-copy --copy-tokens 4 --copy-slots 12 --microbatches 4 --microbatch-size 2
      --seed 5 --quiet --timeout 20 --ckpt-every 200 --ckpt-priority normal)
PMAMBA_FAULT=slow-commit "$BIN/pmamba-train" "${slow[@]}" --steps 100000 --async-ckpt --ckpt-dir "$T/c" \
    >"$T/c.out" 2>"$T/c.err" &
PID=$!
K=$(python3 - "$T/c/metrics.jsonl" <<'PY'
import json, sys, time
# The first checkpoint k whose writes were found done (step w) and whose commit was concluded
# (step c) by steps after w and before the next checkpoint, k + 200, forced it.
deadline = time.time() + 90
while time.time() < deadline:
    try:
        rows = {j["step"]: j for j in map(json.loads, open(sys.argv[1]).read().splitlines()[:-1]) if "loss" in j}
    except (OSError, ValueError):
        rows = {}
    w = {j["ckpt_written"]: s for s, j in rows.items() if "ckpt_written" in j}
    for s, j in sorted(rows.items()):
        k = j.get("ckpt_committed")
        if k is not None and k in w and k < w[k] < s < k + 200:
            if j["ckpt_commit_work_s"] >= 1.0 and j["ckpt_commit_s"] < 1.0:
                print(k)
                sys.exit(0)
            print(f"step {s} concluded the commit of step {k} with a wait: {j}", file=sys.stderr)
            sys.exit(2)
    time.sleep(0.1)
sys.exit(1)
PY
)
OK=$?
kill -TERM $PID; wait $PID; CODE=$?; LAST_CMD="SIGTERM after a slowed commit"; expect_code 0
case $OK in
  0) ;;
  2) fail "the training thread waited for the background commit" ;;
  *) fail "no save was committed beside training within 90 s: $(tail -3 "$T/c.err")" ;;
esac
if [ $OK -eq 0 ]; then
  run "$BIN/pmamba-train" "${slow[@]}" --steps 100000 --stop-after "$K" --ckpt-dir "$T/cs"; expect_code 0
  run "$BIN/pmamba-ckpt" diff "$(step_dir "$T/c" "$K")" "$(step_dir "$T/cs" "$K")"; expect_code 0
fi
# A commit that cannot update `latest` says so from the background thread as the synchronous
# save does, and the run goes on.
for mode in sync async; do
  extra=(); [ $mode = async ] && extra=(--async-ckpt)
  PMAMBA_FAULT=latest-write run "$BIN/pmamba-train" "${common[@]}" "${extra[@]}" --ckpt-dir "$T/l$mode"; expect_code 0
  expect_err "committed $(step_dir "$T/l$mode" 4), but \`latest\` was not updated"
done

# --- SIGKILL during the background write of step 8 (after the shard's first dataset): the previous
# checkpoint is the valid one, and resuming from it (at PP 1, saving step 8 asynchronously) ends
# with every checkpoint bitwise the uninterrupted run's ---
run "$BIN/pmamba-train" "${common[@]}" --stop-after 4 --ckpt-dir "$T/k"; expect_code 0
PMAMBA_FAULT=shard-partial run "$BIN/pmamba-train" "${common[@]}" --async-ckpt --resume auto --ckpt-dir "$T/k" 2>/dev/null
[ "$CODE" -ne 0 ] || fail "the run survived PMAMBA_FAULT=shard-partial"
[ "$(cat "$T/k/latest")" = step-00000004 ] || fail "latest is $(cat "$T/k/latest")"
[ -e "$(step_dir "$T/k" 8)" ] && fail "step 8 was committed by a killed save"
run "$BIN/pmamba-train" "${common[@]}" --async-ckpt --resume auto --ckpt-dir "$T/k"; expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/k" "$T/s"; expect_code 0
LAST_CMD="the step directories of the resumed async run at PP 1 against the synchronous run's"
same_steps "$T/k" "$T/s" || fail "an async checkpoint of the resumed run differs from the synchronous one"
LAST_CMD="metrics of the resumed async run"
python3 - "$T/k/metrics.jsonl" <<'PY' || fail "the resumed run's step 8 was not saved asynchronously"
import json, sys
rows = [j for j in map(json.loads, open(sys.argv[1])) if "loss" in j]
assert any(j["step"] == 8 and "ckpt_snapshot_s" in j for j in rows), rows
PY

# --- a background write that fails (its thread pool cannot start a thread) fails the run at a
# later step with the synchronous save's error and exit code, and commits nothing ---
for mode in sync async; do
  extra=(); [ $mode = async ] && extra=(--async-ckpt)
  PMAMBA_FAULT=thread@1 run "$BIN/pmamba-train" "${common[@]}" --threads 2 "${extra[@]}" --ckpt-dir "$T/f$mode"
  tail -1 "$T/err" >"$T/f$mode.last"; echo "$CODE" >"$T/f$mode.code"
  expect_err "pmamba-train: checkpoint of step 4 failed: "
  [ -z "$(ls "$T/f$mode" | grep step-)" ] || fail "$mode: a failed save left $(ls "$T/f$mode")"
done
[ "$(cat "$T/fasync.code")" = "$(cat "$T/fsync.code")" ] && [ "$(cat "$T/fsync.code")" = 2 ] ||
    fail "exit codes: sync $(cat "$T/fsync.code"), async $(cat "$T/fasync.code")"
cmp -s "$T/fsync.last" "$T/fasync.last" || fail "the errors differ: '$(cat "$T/fsync.last")' / '$(cat "$T/fasync.last")'"
finish
