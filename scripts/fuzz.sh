#!/usr/bin/env bash
# Runs the libFuzzer targets (built by `make fuzz` into BUILD_DIR/bin) for SECONDS each under
# ASan + UBSan, on a scratch copy of each seed corpus (tests/fuzz/corpus/<target>/), and fails
# on the first finding; the input that found it is kept as BUILD_DIR/findings/<target>-crash-*.
#   scripts/fuzz.sh BUILD_DIR SECONDS            the gating targets
#   scripts/fuzz.sh BUILD_DIR SECONDS --raw      fuzz_shard_raw (raw HDF5 bytes; not a gate)
set -uo pipefail
BUILD=$1
SECONDS_EACH=${2:-60}
SRC=$(cd "$(dirname "$0")/.." && pwd)
if [ "${3:-}" = "--raw" ]; then TARGETS=(fuzz_shard_raw); else
  TARGETS=(fuzz_manifest fuzz_latest fuzz_heap fuzz_data fuzz_corpus fuzz_handshake fuzz_shard fuzz_safetensors fuzz_hf_config); fi
# allocator_may_return_null: a refused huge allocation is the code under test's business, not
# a sanitizer finding. The suppressions cover uninstrumented LibTorch, OpenBLAS and HDF5.
export ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1:abort_on_error=1:symbolize=1
export LSAN_OPTIONS=suppressions=$SRC/tests/sanitize/lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:suppressions=$SRC/tests/sanitize/ubsan.supp
mkdir -p "$BUILD/findings"
failed=0
for t in "${TARGETS[@]}"; do
  work=$BUILD/fuzz-work/$t
  rm -rf "$work" && mkdir -p "$work/corpus"
  cp "$SRC/tests/fuzz/corpus/$t/"* "$work/corpus/" 2>/dev/null || true
  echo "fuzz: $t for ${SECONDS_EACH}s ($(ls "$work/corpus" | wc -l) seeds)"
  TMPDIR=$work "$BUILD/bin/$t" -max_total_time="$SECONDS_EACH" -timeout=30 -rss_limit_mb=6144 -print_final_stats=1 \
      -artifact_prefix="$BUILD/findings/$t-" "$work/corpus" >"$work/log" 2>&1
  code=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -1)
  if [ $code -ne 0 ]; then
    echo "fuzz: $t FOUND A PROBLEM (exit $code) after ${runs:-?} inputs; the input is in $BUILD/findings/:"
    grep -E "^(==|SUMMARY|finding|.*runtime error)" "$work/log" | head -20
    failed=1
  else
    echo "fuzz: $t ok, ${runs:-?} inputs, corpus $(ls "$work/corpus" | wc -l)"
  fi
done
exit $failed
