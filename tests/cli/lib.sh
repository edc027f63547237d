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
finish() {
  if [ "$FAILS" -ne 0 ]; then echo "$FAILS check(s) failed"; exit 1; fi
  echo "all checks passed"
}
