#!/usr/bin/env bash
# Failures never hang: a rank killed mid-run makes the others exit non-zero within the timeout
# naming the stage that stopped answering, and the last committed checkpoint still verifies;
# ranks started with different options fail the handshake. Also launches ranks by hand with
# torchrun's and Slurm's variables.
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"
common=(--preset tiny --data selective-copy --copy-tokens 4 --copy-slots 12 --microbatches 4 --microbatch-size 2 --seed 3)

# Starts a 3-stage run checkpointing every 2 steps, kills stage $1 with SIGKILL once a
# checkpoint is committed, waits for the others; sets CODE and ELAPSED, stderr in $T/$2.err.
# Whatever goes wrong, no trainer outlives the test (and the test never waits on a
# 100000-step run): a watchdog kills the launcher and its stages after 90 s.
kill_stage_mid_run() {
  local victim_rank=$1 name=$2
  "$BIN/pmamba-train" "${common[@]}" --pp 3 --steps 100000 --ckpt-every 2 --ckpt-dir "$T/$name" --timeout 20 \
      >"$T/$name.out" 2>"$T/$name.err" &
  LAUNCHER=$!
  ( sleep 90 >/dev/null 2>&1; pkill -9 -P "$LAUNCHER"; kill -9 "$LAUNCHER" ) >/dev/null 2>&1 &
  local watchdog=$! victim=""
  for _ in $(seq 1 600); do [ -f "$T/$name/latest" ] && break; sleep 0.1; done
  for pid in $(pgrep -P $LAUNCHER); do
    if tr '\0' '\n' < /proc/$pid/environ | grep -qx "RANK=$victim_rank"; then victim=$pid; fi
  done
  LAST_CMD="pmamba-train --pp 3 with stage $victim_rank killed"
  if [ ! -f "$T/$name/latest" ] || [ -z "$victim" ]; then
    fail "no checkpoint was committed within 60 s, or stage $victim_rank's process was not found"
    pkill -9 -P "$LAUNCHER"; kill -9 "$LAUNCHER"; wait $LAUNCHER
    CODE=0; ELAPSED=0
  else
    local start; start=$(date +%s)
    kill -9 "$victim"
    wait $LAUNCHER
    CODE=$?
    ELAPSED=$(( $(date +%s) - start ))
    echo "stage $victim_rank killed: the run exited $CODE after ${ELAPSED}s; its last lines:"
    tail -3 "$T/$name.err"
  fi
  kill "$watchdog" 2>/dev/null
}

# --- a rank killed mid-run ---
kill_stage_mid_run 1 k
[ "$CODE" -ne 0 ] || fail "the run exited 0 after a stage was killed"
[ "$ELAPSED" -le 20 ] || fail "the other stages took ${ELAPSED}s (> the 20 s timeout) to exit"
grep -q "stage 1 stopped answering" "$T/k.err" || fail "no error names stage 1: $(tail -5 "$T/k.err")"
grep -q "stage [02] stopped answering" "$T/k.err" && fail "a surviving stage was blamed: $(tail -5 "$T/k.err")"
run "$BIN/pmamba-ckpt" verify "$T/k"; expect_code 0

# --- stage 0 (which serves the rendezvous store) killed: it is the stage named, never stage 2 ---
kill_stage_mid_run 0 k0
[ "$CODE" -ne 0 ] || fail "the run exited 0 after stage 0 was killed"
grep -Eq "^\[stage 1\].*stage 0( \([^)]*\))? stopped answering" "$T/k0.err" || fail "stage 1 does not name stage 0: $(tail -5 "$T/k0.err")"
grep -q "stage 2 stopped answering" "$T/k0.err" && fail "the surviving stage 2 was blamed: $(tail -5 "$T/k0.err")"
run "$BIN/pmamba-ckpt" verify "$T/k0"; expect_code 0

# --- stage 0 dies after creating a step directory, before the others hear its name: they wait
# on the launcher's store, which outlives it, yet stop within a heartbeat naming it (the
# launcher records the death there), not at their timeout or the launcher's 10 s grace ---
PMAMBA_FAULT=step-dir-made run timeout 60 "$BIN/pmamba-train" "${common[@]}" --pp 3 --steps 4 --ckpt-every 2 --ckpt-dir "$T/sm" --timeout 20
expect_code 1
for r in 1 2; do
  expect_err "[stage $r] pmamba-train: stage 0 stopped answering (the launcher saw it killed by SIGKILL): stage $r waited for 'ckpt/2'"
done
grep -q "did not exit within" "$T/err" && fail "the launcher had to kill the stages that waited"
[ "$(tail -1 "$T/err")" = "pmamba-train: stage 0 was killed by SIGKILL" ] || fail "last line: $(tail -1 "$T/err")"
[ ! -e "$T/sm/latest" ] || fail "a checkpoint was committed"

# --- stage 0 fails on its own (it cannot create the step directory): the others report its
# reason, and the launcher's last line names stage 0 and exits with its code (2, as at PP 1) ---
PMAMBA_FAULT=step-dir run timeout 60 "$BIN/pmamba-train" "${common[@]}" --pp 3 --steps 4 --ckpt-every 2 --ckpt-dir "$T/sd" --timeout 20
expect_code 2
for r in 1 2; do
  expect_err "[stage $r] pmamba-train: stage 0 gave up while stage $r waited for 'ckpt/2'; it reported: cannot create directory"
done
[ "$(tail -1 "$T/err" | grep -c '^pmamba-train: stage 0 failed: cannot create directory')" = 1 ] || fail "last line: $(tail -1 "$T/err")"
PMAMBA_FAULT=step-dir run timeout 60 "$BIN/pmamba-train" "${common[@]}" --pp 1 --steps 4 --ckpt-every 2 --ckpt-dir "$T/sd1" --timeout 20
expect_code 2
# A checkpoint root that is a file is refused before any stage starts, in one line.
touch "$T/notadir"
run timeout 60 "$BIN/pmamba-train" "${common[@]}" --pp 3 --steps 4 --ckpt-every 2 --ckpt-dir "$T/notadir" --timeout 20
expect_code 2; expect_err_line "it exists and is not a directory"

# --- ranks started by hand with torchrun's variables, one with another boundary mode ---
RANK0_ARGS="--boundary packed" RANK1_ARGS="--boundary summed" \
    mismatched_ranks hs "$BIN/pmamba-train" "${common[@]}" --pp 2 --steps 2 --timeout 20
# Each side names the field: from its own comparison, or from the other side's report when
# that reached it first ("stage 1 gave up while stage 0 waited for the handshake; it reported:
# handshake with stage 0 failed: ...").
for r in 0 1; do
  grep -q "handshake with stage [01] failed: boundary mode differs" "$T/hs$r.err" || fail "rank $r: $(cat "$T/hs$r.err")"
done

# --- a different model config on one rank ---
printf '{"d_model": 32, "n_layer": 4, "vocab_size": 64, "d_state": 4}' > "$T/other.json"
RANK0_ARGS="--preset tiny" RANK1_ARGS="--config $T/other.json" \
    mismatched_ranks cfg "$BIN/pmamba-train" "${common[@]:2}" --pp 2 --steps 2 --timeout 20
grep -q "config digest differs" "$T/cfg0.err" || fail "rank 0: $(cat "$T/cfg0.err")"
grep -q "config digest differs" "$T/cfg1.err" || fail "rank 1: $(cat "$T/cfg1.err")"

# --- a different learning rate on one rank: caught by the handshake, not trained silently ---
RANK0_ARGS="--lr 0.001" RANK1_ARGS="--lr 0.002" \
    mismatched_ranks lr "$BIN/pmamba-train" "${common[@]}" --pp 2 --steps 2 --timeout 20
for r in 0 1; do
  grep -Eq "handshake with stage [01] failed: --lr differs \(stage ([01]) has 0.00[12], stage [01] has 0.00[12]\)" "$T/lr$r.err" ||
    fail "rank $r: $(cat "$T/lr$r.err")"
done

# --- Slurm-style variables launch a healthy run equal to the local launcher's ---
P=$(free_port)
for r in 0 1; do
  SLURM_PROCID=$r SLURM_NTASKS=2 SLURM_STEP_NUM_TASKS=2 SLURM_LOCALID=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$P timeout 120 \
      "$BIN/pmamba-train" "${common[@]}" --pp 2 --steps 3 --ckpt-dir "$T/slurm" --quiet >/dev/null 2>"$T/sl$r.err" &
  eval "PID$r=$!"
done
wait $PID0; C0=$?; wait $PID1; C1=$?
[ $C0 -eq 0 ] && [ $C1 -eq 0 ] || { LAST_CMD="slurm launch"; fail "slurm-style ranks exited $C0 $C1: $(cat "$T/sl1.err")"; }
run "$BIN/pmamba-train" "${common[@]}" --pp 2 --steps 3 --ckpt-dir "$T/local" --quiet; expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/slurm" "$T/local"; expect_code 0

# --- inside a batch script (Slurm's allocation variables, no srun step) and under a launcher of
# one process, --pp 2 starts its own stages ---
SLURM_PROCID=0 SLURM_NTASKS=2 SLURM_LOCALID=0 run timeout 120 "$BIN/pmamba-train" "${common[@]}" --pp 2 --steps 3 --ckpt-dir "$T/sbatch" --quiet
expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/sbatch" "$T/local"; expect_code 0
RANK=0 WORLD_SIZE=1 run timeout 120 "$BIN/pmamba-train" "${common[@]}" --pp 2 --steps 3 --ckpt-dir "$T/one" --quiet
expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/one" "$T/local"; expect_code 0

# --- --print-schedule prints the action lists once, not once more per stage ---
run "$BIN/pmamba-train" "${common[@]}" --pp 2 --steps 1 --print-schedule --quiet; expect_code 0
[ "$(sed 's/^\[stage [0-9]*\] //' "$T/out" | grep -c '^schedule 1f1b: 2 stages')" = 1 ] || fail "the schedule was not printed exactly once"
expect_out "stage 1 (peak activations"

# --- usage errors exit 2 before starting anything ---
run "$BIN/pmamba-train" "${common[@]}" --pp 2 --schedule zb; expect_code 2
run "$BIN/pmamba-train" "${common[@]}" --pp 9 --steps 1; expect_code 2; expect_err "more than allowed"
run "$BIN/pmamba-train" --preset tiny --data induction --task-vocab 100 --steps 1; expect_code 2; expect_err "needs a vocabulary of 100"
run "$BIN/pmamba-train" --preset tiny --data /nonexistent/file.txt --steps 1; expect_code 2; expect_err "cannot use data file"
run "$BIN/pmamba-train" "${common[@]}" --pp 2 --steps 1 --device cpu --backend nccl; expect_code 2
expect_err "--backend nccl needs --device cuda"
run "$BIN/pmamba-train" "${common[@]}" --steps 1 --device tpu; expect_code 2; expect_err "unknown device 'tpu'"
run "$BIN/pmamba-train" "${common[@]}" --steps 1 --autocast fp8; expect_code 2
if ! command -v nvidia-smi >/dev/null; then  # a CPU-only machine: asking for a GPU is a clear error
  run "$BIN/pmamba-train" "${common[@]}" --pp 2 --steps 1 --device cuda; expect_code 2; expect_err "asks for a CUDA device"
fi
RANK=0 WORLD_SIZE=3 MASTER_ADDR=127.0.0.1 MASTER_PORT=$(free_port) run "$BIN/pmamba-train" "${common[@]}" --pp 2 --steps 1
expect_code 2; expect_err "the launcher started 3 processes"
finish
