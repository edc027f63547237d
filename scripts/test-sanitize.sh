#!/usr/bin/env bash
# Runs the unit and CLI tests of a PMAMBA_SANITIZE build (make test-sanitize) under
# AddressSanitizer + UndefinedBehaviorSanitizer: every pmamba process of every test, the
# stages a launcher starts included, reports memory errors, leaks and undefined behaviour. The
# suppression files cover the uninstrumented LibTorch, OpenBLAS, Gloo and HDF5 only.
#   scripts/test-sanitize.sh BUILD_DIR [JOBS]
set -uo pipefail
BUILD=$1
JOBS=${2:-2}
SRC=$(cd "$(dirname "$0")/.." && pwd)
# handle_segv=0: tests send SIGSEGV to a stage on purpose and expect it to die of it (a real
# segfault still fails its test, just without ASan's report).
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=0:handle_segv=0
export LSAN_OPTIONS=suppressions=$SRC/tests/sanitize/lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:suppressions=$SRC/tests/sanitize/ubsan.supp
# Sanitized processes start and run slower: tests with time limits allow for that, and the one
# that measures memory through mallinfo2 skips (ASan replaces malloc).
export PMAMBA_SANITIZED=1
cd "$BUILD" && ctest --output-on-failure -j "$JOBS" --timeout 3000 "${@:3}"
