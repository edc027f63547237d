#!/usr/bin/env bash
# Preemption: SIGTERM, SIGINT or SIGUSR1 to the launcher or to any one stage stops every stage
# after the same step, commits it and exits 0, saying where it is; resuming gives bitwise the
# uninterrupted run. A second signal exits 1 at once. Killing the launcher kills its stages.
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"
common=(--preset tiny --data selective-copy --copy-tokens 4 --copy-slots 12 --microbatches 2 --microbatch-size 2
        --seed 7 --timeout 5 --quiet)
step_lines() { python3 -c 'import json, sys
print(sum(1 for l in open(sys.argv[1]) if "loss" in json.loads(l)))' "$1" 2>/dev/null || echo 0; }
# Starts a training in the background with metrics in $T/$1.jsonl; waits until it has done $2 steps.
start_training() {
  local name=$1 steps=$2; shift 2
  "$BIN/pmamba-train" "${common[@]}" --metrics "$T/$name.jsonl" "$@" >"$T/$name.out" 2>"$T/$name.err" &
  PID=$!
  for _ in $(seq 1 400); do [ "$(step_lines "$T/$name.jsonl")" -ge "$steps" ] && return; sleep 0.05; done
  LAST_CMD="pmamba-train $*"; fail "$name did not reach step $steps"
}
stopped_step() { sed -n 's/.*stopped by SIG[A-Z0-9]* after step \([0-9]*\).*/\1/p' "$T/$1.out" | head -1; }

# --- the issue's acceptance: SIGTERM to a PP 2 launcher after 4 s ---
"$BIN/pmamba-train" --preset tiny --data selective-copy --steps 4000 --ckpt-every 100000 --pp 2 --ckpt-dir "$T/P" \
    --timeout 5 >"$T/p.out" 2>"$T/p.err" &
P=$!
sleep 4
kill -TERM $P
wait $P; CODE=$?
LAST_CMD="SIGTERM to pmamba-train --pp 2 after 4 s"
expect_code 0
grep -q "\[stage 0\] pmamba-train: stopped by SIGTERM after step [0-9]*: committed $T/P/step-" "$T/p.out" ||
    fail "no line says where it stopped: $(tail -2 "$T/p.out")"
N=$(sed -n 's/.*stopped by SIGTERM after step \([0-9]*\).*/\1/p' "$T/p.out")
[ "$(cat "$T/P/latest")" = "$(printf 'step-%08d' "$N")" ] || fail "latest is $(cat "$T/P/latest"), the run stopped after step $N"
run "$BIN/pmamba-ckpt" verify "$T/P"; expect_code 0

# --- stopped mid-run and resumed: bitwise the uninterrupted run ---
run "$BIN/pmamba-train" "${common[@]}" --steps 30 --pp 2 --ckpt-dir "$T/U"; expect_code 0
start_training s 5 --steps 30 --pp 2 --ckpt-dir "$T/S"
kill -TERM $PID; wait $PID; CODE=$?; LAST_CMD="SIGTERM at step >= 5"; expect_code 0
N=$(stopped_step s)
[ -n "$N" ] && [ "$N" -ge 5 ] && [ "$N" -lt 30 ] || fail "stopped at step '$N': $(cat "$T/s.out")"
run "$BIN/pmamba-train" --resume auto --ckpt-dir "$T/S" --pp 2 --quiet --timeout 5; expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/S" "$T/U"; expect_code 0; expect_out "EQUAL"

# --- a signal that reaches one stage alone stops all of them after the same step ---
start_training one 3 --steps 4000 --pp 3 --ckpt-dir "$T/O"
for pid in $(pgrep -P $PID); do
  tr '\0' '\n' </proc/$pid/environ | grep -qx RANK=2 && kill -USR1 $pid
done
wait $PID; CODE=$?; LAST_CMD="SIGUSR1 to stage 2 only"; expect_code 0
grep -q "stopped (another stage received a stop signal) after step" "$T/one.out" || fail "$(tail -3 "$T/one.out")"
run "$BIN/pmamba-ckpt" verify "$T/O"; expect_code 0

# --- at PP 1, SIGINT (Ctrl-C) does the same (a script's background job ignores SIGINT, so the
# run is started through Python with SIGINT back to its default, as a terminal's job has it) ---
DFL_INT=(python3 -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])')
start_training_with() { local name=$1 steps=$2; shift 2
  "${DFL_INT[@]}" "$BIN/pmamba-train" "${common[@]}" --metrics "$T/$name.jsonl" "$@" >"$T/$name.out" 2>"$T/$name.err" &
  PID=$!
  for _ in $(seq 1 400); do [ "$(step_lines "$T/$name.jsonl")" -ge "$steps" ] && return; sleep 0.05; done
  fail "$name did not reach step $steps"
}
start_training_with pp1 3 --steps 4000 --ckpt-dir "$T/Q"
kill -INT $PID; wait $PID; CODE=$?; LAST_CMD="SIGINT at PP 1"; expect_code 0
N=$(stopped_step pp1)
[ "$(cat "$T/Q/latest")" = "$(printf 'step-%08d' "$N")" ] || fail "latest $(cat "$T/Q/latest") for a stop after step $N"

# --- a signal before step 1 commits step 0; without --ckpt-dir nothing is saved, and it says so ---
"$BIN/pmamba-train" "${common[@]}" --steps 4000 --pp 2 --ckpt-dir "$T/Z" >"$T/z.out" 2>"$T/z.err" &
Z=$!
# The moment the launcher has started its stages (they still have LibTorch to load).
for _ in $(seq 1 400); do [ "$(pgrep -P $Z | wc -l)" -ge 2 ] && break; sleep 0.01; done
kill -TERM $Z; wait $Z; CODE=$?; LAST_CMD="SIGTERM while starting"; expect_code 0
grep -q "stopped by SIGTERM after step 0: committed $T/Z/step-00000000" "$T/z.out" || fail "$(cat "$T/z.out" "$T/z.err")"
run "$BIN/pmamba-ckpt" verify "$T/Z"; expect_code 0
start_training none 2 --steps 4000 --pp 2
kill -TERM $PID; wait $PID; CODE=$?; LAST_CMD="SIGTERM without --ckpt-dir"; expect_code 0
grep -q "no --ckpt-dir was given, so nothing was saved" "$T/none.out" || fail "$(tail -2 "$T/none.out")"

# --- a second signal exits 1 at once, without a checkpoint of the step in progress ---
start_training twice 2 --steps 4000 --pp 2 --ckpt-dir "$T/W"
start=$(date +%s)
kill -TERM $PID; kill -USR1 $PID
wait $PID; CODE=$?; LAST_CMD="SIGTERM then SIGUSR1"; expect_code 1
[ $(( $(date +%s) - start )) -le 3 ] || fail "a second signal did not stop the run at once"
grep -q "second SIG" "$T/twice.err" || fail "$(tail -2 "$T/twice.err")"
sleep 1
[ -z "$(pgrep -P $PID)" ] || fail "stages survived the second signal"

# --- SIGKILL of the launcher: no stage survives it by 2 s ---
start_training orphan 2 --steps 100000 --pp 3 --ckpt-every 1 --ckpt-dir "$T/K"
STAGES=$(pgrep -P $PID)
[ "$(echo "$STAGES" | wc -w)" -eq 3 ] || fail "expected 3 stages, found: $STAGES"
kill -KILL $PID; wait $PID 2>/dev/null
sleep 2
for s in $STAGES; do
  if kill -0 "$s" 2>/dev/null; then LAST_CMD="SIGKILL of the launcher"; fail "stage process $s outlived its launcher"; kill -9 "$s"; fi
done
run "$BIN/pmamba-ckpt" verify "$T/K"; expect_code 0
finish
