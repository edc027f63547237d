#!/usr/bin/env bash
# Every wait is bounded and names who is missing: a stopped stage 0 (SIGSTOP) ends the job
# within --timeout + a small constant; a rank that never starts, or a missing stage 0, is named
# after one --timeout; bad MASTER_ADDR / MASTER_PORT are refused at start; a stage killed by a
# signal makes the launcher exit 1 with a line naming the stage and the signal.
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"
TIMEOUT=5
common=(--preset tiny --data selective-copy --copy-tokens 4 --copy-slots 12 --microbatches 2 --microbatch-size 2
        --seed 3 --timeout $TIMEOUT)
step_lines() { python3 -c 'import json, sys
print(sum(1 for l in open(sys.argv[1]) if "loss" in json.loads(l)))' "$1" 2>/dev/null || echo 0; }
rank_pid() {  # the pid among $1's children whose RANK is $2
  for pid in $(pgrep -P "$1"); do
    tr '\0' '\n' </proc/$pid/environ 2>/dev/null | grep -qx "RANK=$2" && echo "$pid"
  done
}
# Waits for a background pid at most $2 seconds; sets CODE (124 when it had to be killed).
wait_at_most() {
  local pid=$1 limit=$2
  for _ in $(seq 1 $((limit * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    pkill -9 -P "$pid"; kill -9 "$pid"; wait "$pid" 2>/dev/null; CODE=124
  else
    wait "$pid"; CODE=$?
  fi
}

# --- SIGSTOP of stage 0 under the local launcher: the job ends within --timeout + 20 s ---
"$BIN/pmamba-train" "${common[@]}" --steps 100000 --pp 3 --quiet --metrics "$T/stop.jsonl" >"$T/stop.out" 2>"$T/stop.err" &
L=$!
for _ in $(seq 1 300); do [ "$(step_lines "$T/stop.jsonl")" -ge 2 ] && break; sleep 0.1; done
S0=$(rank_pid $L 0)
kill -STOP "$S0"
start=$(date +%s)
wait_at_most $L $((TIMEOUT + 20))
elapsed=$(( $(date +%s) - start ))
kill -CONT "$S0" 2>/dev/null; kill -9 "$S0" 2>/dev/null
LAST_CMD="pmamba-train --pp 3, stage 0 stopped (SIGSTOP)"
echo "stage 0 stopped: the run exited $CODE after ${elapsed}s; its last line: $(tail -1 "$T/stop.err")"
[ "$CODE" -ne 124 ] || fail "the job was still running $((TIMEOUT + 20)) s after stage 0 stopped"
expect_code 1
tail -1 "$T/stop.err" | grep -q "stage 0 stopped answering" || fail "the last line does not name stage 0: $(tail -3 "$T/stop.err")"

# --- the same with ranks launched by hand, where stage 0 serves the store itself ---
P=$(free_port)
for r in 0 1; do
  RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$P "$BIN/pmamba-train" "${common[@]}" --steps 100000 --pp 2 \
      --quiet --metrics "$T/hand$r.jsonl" >/dev/null 2>"$T/hand$r.err" &
  eval "H$r=$!"
done
for _ in $(seq 1 300); do [ "$(step_lines "$T/hand1.jsonl")" -ge 2 ] && break; sleep 0.1; done
kill -STOP "$H0"
start=$(date +%s)
wait_at_most "$H1" $((TIMEOUT + 20))
elapsed=$(( $(date +%s) - start ))
kill -9 "$H0"; wait "$H0" 2>/dev/null
LAST_CMD="hand-launched stage 1 while stage 0 (the store's host) is stopped"
echo "stage 0 (store host) stopped: stage 1 exited $CODE after ${elapsed}s: $(tail -1 "$T/hand1.err")"
[ "$CODE" -ne 124 ] || fail "stage 1 hung after stage 0 stopped"
[ "$CODE" -ne 0 ] || fail "stage 1 exited 0"
tail -1 "$T/hand1.err" | grep -q "stage 0" || fail "stage 1 does not name stage 0: $(tail -3 "$T/hand1.err")"

# --- ranks that never start: named after one --timeout ---
P=$(free_port)
start=$(date +%s)
RANK=0 WORLD_SIZE=4 MASTER_ADDR=127.0.0.1 MASTER_PORT=$P run timeout 60 "$BIN/pmamba-train" "${common[@]}" --steps 2 --pp 4
elapsed=$(( $(date +%s) - start ))
[ "$CODE" -ne 0 ] && [ "$CODE" -ne 124 ] || fail "exit code $CODE"
expect_err "waited $TIMEOUT s for stages 1, 2, 3 of 4 to join the rendezvous"
# A sanitized build (make test-sanitize) needs several seconds more just to load LibTorch.
slack=0; [ -z "${PMAMBA_SANITIZED:-}" ] || slack=10
[ "$elapsed" -lt $((2 * TIMEOUT + slack)) ] ||
    fail "rank 0 took ${elapsed}s, more than one --timeout ($TIMEOUT s) and a little"
# Stage 0 never starts: the others cannot reach its store, and say so.
P=$(free_port)
RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$P run timeout 60 "$BIN/pmamba-train" "${common[@]}" --steps 2 --pp 2
[ "$CODE" -ne 0 ] && [ "$CODE" -ne 124 ] || fail "exit code $CODE"
expect_err "could not reach the rendezvous store at 127.0.0.1:$P (served by stage 0) within $TIMEOUT s"

# --- bad rendezvous addresses are refused at start, with the reason ---
RANK=1 WORLD_SIZE=2 MASTER_ADDR=256.1.1.1 MASTER_PORT=29500 run "$BIN/pmamba-train" "${common[@]}" --steps 1 --pp 2
expect_code 2; expect_err_line "MASTER_ADDR='256.1.1.1' is not a valid IPv4 address"
RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=99999 run "$BIN/pmamba-train" "${common[@]}" --steps 1 --pp 2
expect_code 2; expect_err_line "MASTER_PORT='99999' is not a TCP port (1 to 65535)"
RANK=1 WORLD_SIZE=2 MASTER_ADDR=no-such-host.invalid MASTER_PORT=29500 run "$BIN/pmamba-train" "${common[@]}" --steps 1 --pp 2
expect_code 2; expect_err_line "MASTER_ADDR='no-such-host.invalid' does not resolve"

# --- a stage killed by a signal: the launcher exits 1 naming the stage and the signal ---
"$BIN/pmamba-train" "${common[@]}" --steps 100000 --pp 2 --quiet --metrics "$T/seg.jsonl" >/dev/null 2>"$T/seg.err" &
L=$!
for _ in $(seq 1 300); do [ "$(step_lines "$T/seg.jsonl")" -ge 1 ] && break; sleep 0.1; done
kill -SEGV "$(rank_pid $L 1)"
wait_at_most $L 30
LAST_CMD="stage 1 killed by SIGSEGV"
expect_code 1
[ "$(tail -1 "$T/seg.err")" = "pmamba-train: stage 1 was killed by SIGSEGV" ] || fail "last line: $(tail -1 "$T/seg.err")"
finish
