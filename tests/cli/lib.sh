# Helpers for the CLI tests: run a command capturing stdout/stderr/exit code, then assert.
T=$(mktemp -d "${TMPDIR:-/tmp}/pmamba-cli-XXXXXX")
trap 'rm -rf "$T"' EXIT
FAILS=0
LAST_CMD=""
run() {
  LAST_CMD="$*"
  "$@" >"$T/out" 2>"$T/err"
  CODE=$?
}
fail() {
  echo "FAIL: $*"
  echo "  command: $LAST_CMD"
  echo "  stdout: $(head -c 2000 "$T/out" 2>/dev/null)"
  echo "  stderr: $(head -c 2000 "$T/err" 2>/dev/null)"
  FAILS=$((FAILS + 1))
}
expect_code() { [ "$CODE" -eq "$1" ] || fail "expected exit code $1, got $CODE"; }
expect_out() { grep -qF -- "$1" "$T/out" || fail "stdout lacks '$1'"; }
expect_err() { grep -qF -- "$1" "$T/err" || fail "stderr lacks '$1'"; }
# stderr is exactly one line and contains the text
expect_err_line() {
  expect_err "$1"
  [ "$(wc -l <"$T/err")" -eq 1 ] || fail "stderr is not one line"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Starts ranks 0 and 1 of a 2-stage job by hand (torchrun's variables, a fresh loopback port):
# rank r runs "$@" followed by the words of $RANK0_ARGS or $RANK1_ARGS; stderr goes to
# $T/NAME0.err and $T/NAME1.err. Expects both to fail, neither to hang (60 s limit).
mismatched_ranks() {
  local name=$1; shift
  local port pid0 pid1 c0 c1
  port=$(free_port)
  # shellcheck disable=SC2086
  RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port timeout 60 "$@" $RANK0_ARGS >/dev/null 2>"$T/${name}0.err" &
  pid0=$!
  # shellcheck disable=SC2086
  RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port timeout 60 "$@" $RANK1_ARGS >/dev/null 2>"$T/${name}1.err" &
  pid1=$!
  wait $pid0; c0=$?; wait $pid1; c1=$?
  LAST_CMD="hand-launched ranks ($name): $* [$RANK0_ARGS | $RANK1_ARGS]"
  [ $c0 -ne 0 ] && [ $c0 -ne 124 ] && [ $c1 -ne 0 ] && [ $c1 -ne 124 ] || fail "exit codes $c0 $c1 (124 = hung)"
}
finish() {
  if [ "$FAILS" -ne 0 ]; then echo "$FAILS check(s) failed"; exit 1; fi
  echo "all checks passed"
}
