#!/usr/bin/env bash
# A CLI that helps: `--version` on every tool, every default in `--help`, "did you mean" for a
# mistyped option, subcommand or choice, pmamba-ckpt's ls header, info table and diff order, and
# `make install` (cmake --install) giving tools that work from any directory.
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"
BUILD=$(cd "$BIN/.." && pwd)
CMAKE=${PMAMBA_CMAKE:-cmake}

# --version: "<tool> <version> (LibTorch X.Y.Z, CUDA V)", exit 0, the same shape for every tool.
for tool in train eval ckpt reshard convert generate report; do
  [ -x "$BIN/pmamba-$tool" ] || { [ "$tool" = report ] && continue; fail "pmamba-$tool not built"; continue; }
  run "$BIN/pmamba-$tool" --version; expect_code 0
  grep -qE "^pmamba-$tool [0-9][^ ]* \(LibTorch [0-9]+\.[0-9]+\.[0-9]+, CUDA [^)]+\)$" "$T/out" ||
    fail "pmamba-$tool --version: $(cat "$T/out")"
done

# --help shows every default as the user would write it; flags and empty strings show none.
run "$BIN/pmamba-train" --help; expect_code 0
grep -qE -- '^ +--lr FLOAT(=| \[)0\.001\b' "$T/out" || fail "--help: --lr without its default 0.001"
grep -qE -- '^ +--steps INT.*(=| \[)100\b' "$T/out" || fail "--help: --steps without its default 100"
grep -qE -- '^ +--schedule TEXT.*(=| \[)1f1b\b' "$T/out" || fail "--help: --schedule without its default 1f1b"
grep -qE -- '^ +--seed UINT64.*(=| \[)0\b' "$T/out" || fail "--help: --seed without its default 0"
grep -q -- '0\.00100000' "$T/out" && fail "--help prints a float with its binary noise"
grep -qE -- '^ +--quiet +no per-step' "$T/out" || fail "--help: the flag --quiet shows a default"
grep -qE -- '^ +--ckpt-dir TEXT +checkpoint root' "$T/out" || fail "--help: the empty --ckpt-dir shows a default"
run "$BIN/pmamba-ckpt" diff --help; expect_code 0
grep -qE -- '^ +--top .*(=| \[)10\b' "$T/out" || fail "ckpt diff --help: --top without its default 10"

# Did you mean: one line, exit 2, CLI11's message, the suggestion, the pointer to --help.
run "$BIN/pmamba-train" --stesp 10; expect_code 2
expect_err_line "pmamba-train: The following arguments were not expected"
expect_err "(did you mean --steps?) (see pmamba-train --help)"
run "$BIN/pmamba-train" --stesp=10; expect_code 2; expect_err_line "(did you mean --steps?)"
run "$BIN/pmamba-train" --schedule 1f1; expect_code 2
expect_err_line "pmamba-train: --schedule: 1f1 not in {gpipe,1f1b} (did you mean 1f1b?) (see pmamba-train --help)"
run "$BIN/pmamba-ckpt" verfy x; expect_code 2; expect_err_line "(did you mean verify?) (see pmamba-ckpt --help)"
run "$BIN/pmamba-ckpt" diff a b --topp 3; expect_code 2; expect_err_line "(did you mean --top?)"
run "$BIN/pmamba-convert" imprt a b; expect_code 2; expect_err_line "(did you mean import?)"
# Nothing close: no suggestion (a one-character choice is not "close" to another).
run "$BIN/pmamba-train" --frobnicate; expect_code 2; expect_err_line "(see pmamba-train --help)"
grep -q "did you mean" "$T/err" && fail "a suggestion for --frobnicate"
run "$BIN/pmamba-train" --zero 2; expect_code 2; expect_err_line "not in {0,1}"
grep -q "did you mean" "$T/err" && fail "a suggestion for --zero 2"

# ckpt ls: a header row, then one row per FQN.
run "$BIN/pmamba-ckpt" init "$T/c" --preset tiny --seed 3 --pp 2; expect_code 0
run "$BIN/pmamba-ckpt" ls "$T/c"; expect_code 0
head -1 "$T/out" | grep -qE '^fqn +shape +dtype +stage +stored bytes +size +xxh3_64$' || fail "ls header: $(head -1 "$T/out")"
[ "$(tail -n +2 "$T/out" | wc -l)" -eq 43 ] || fail "ls: $(tail -n +2 "$T/out" | wc -l) rows, expected 43"
grep -qE '^backbone.embedding.weight +\(64, 32\) +float32 +stage 0 +[0-9,]+ +[0-9.]+ (B|KiB) +[0-9a-f]{16}$' "$T/out" ||
  fail "ls row of the embedding"

# Two tiny runs that differ only in their seeds.
common=(--preset tiny --steps 2 --microbatches 2 --microbatch-size 2 --threads 1 --quiet)
run "$BIN/pmamba-train" "${common[@]}" --seed 1 --ckpt-dir "$T/r1"; expect_code 0
run "$BIN/pmamba-train" "${common[@]}" --seed 2 --ckpt-dir "$T/r2"; expect_code 0

# ckpt info: the training state as an aligned two-column table, nested keys flattened.
run "$BIN/pmamba-ckpt" info "$T/r1"; expect_code 0
expect_out "bytes (" ; expect_out "KiB"
sed -n '/^train$/,$p' "$T/out" >"$T/table"
grep -qE '^  seed +1$' "$T/table" || fail "info: no 'seed 1' row: $(cat "$T/out")"
grep -qE '^  data\.source +selective-copy$' "$T/table" || fail "info: no flattened data.source row"
grep -qE '^  lr_schedule\.lr +0\.001$' "$T/table" || fail "info: no flattened lr_schedule.lr row"
[ "$(tail -n +2 "$T/table" | awk '{ match($0, /^  [^ ]+ +/); print RLENGTH }' | sort -u | wc -l)" -eq 1 ] ||
  fail "info: the training-state values do not start in one column"
run "$BIN/pmamba-ckpt" info "$T/r1" --json; expect_code 0; expect_out '"train":{'

# ckpt diff: the largest differences first, the rest counted.
run "$BIN/pmamba-ckpt" diff "$T/r1" "$T/r2" --params-only --top 3; expect_code 1
[ "$(grep -c '^different ' "$T/out")" -eq 3 ] || fail "diff --top 3 printed $(grep -c '^different ' "$T/out") tensors"
expect_out "more differing tensors"
run "$BIN/pmamba-ckpt" diff "$T/r1" "$T/r2" --params-only --top 0; expect_code 1
sed -n 's/^different .*max abs \([^,]*\),.*/\1/p' "$T/out" >"$T/maxabs"
[ "$(wc -l <"$T/maxabs")" -gt 3 ] || fail "diff --top 0 listed $(wc -l <"$T/maxabs") tensors"
sort -g -r "$T/maxabs" | cmp -s - "$T/maxabs" || fail "diff lines are not ordered by max abs: $(tr '\n' ' ' <"$T/maxabs")"
[ "$(head -1 "$T/maxabs")" = "$(sort -g -r "$T/maxabs" | head -1)" ] || fail "the first line is not the largest difference"
grep -q "more differing tensors" "$T/out" && fail "--top 0 still holds tensors back"
# Another config: its fields are named before the tensor lines; JSON gains the same list.
python3 - "$T/cfg.json" <<'PY'
import json, sys
json.dump({"d_model": 48, "n_layer": 4, "vocab_size": 64, "d_state": 8, "tie_embeddings": True,
           "pad_vocab_size_multiple": 8}, open(sys.argv[1], "w"))
PY
run "$BIN/pmamba-ckpt" init "$T/c48" --config "$T/cfg.json" --seed 3 --pp 1; expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/c" "$T/c48"; expect_code 1
expect_out "config: d_model 32 vs 48"
[ "$(grep -n '^config: ' "$T/out" | head -1 | cut -d: -f1)" -lt "$(grep -nE '^(shape|different) ' "$T/out" | head -1 | cut -d: -f1)" ] ||
  fail "the config line does not come before the tensor lines"
run "$BIN/pmamba-ckpt" diff "$T/c" "$T/c48" --json; expect_code 1
python3 -c "import json,sys; d=json.load(open('$T/out')); assert {'field': 'd_model', 'a': '32', 'b': '48'} in d['config_differences'], d['config_differences']; assert d['config_equal'] is False" ||
  fail "diff --json config_differences"

# make install (what it runs: cmake --install): the tools, the plugin and the docs under PREFIX;
# the installed tools run from anywhere, with nothing from the build tree.
if [ -f "$BUILD/cmake_install.cmake" ]; then
  P=$T/inst
  run "$CMAKE" --install "$BUILD" --prefix "$P"; expect_code 0
  for f in bin/pmamba-train bin/pmamba-ckpt bin/pmamba-reshard bin/pmamba-eval bin/pmamba-convert \
           bin/pmamba-generate lib/pmamba/plugin/libh5zstd.so share/doc/pmamba/README.md \
           share/doc/pmamba/CLI.md share/doc/pmamba/FORMAT.md; do
    [ -e "$P/$f" ] || fail "make install did not install $f"
  done
  mkdir -p "$T/elsewhere"
  (
    cd "$T/elsewhere" || exit 1
    run env -u HDF5_PLUGIN_PATH "$P/bin/pmamba-ckpt" --help; expect_code 0
    run env -u HDF5_PLUGIN_PATH "$P/bin/pmamba-ckpt" init ck --preset tiny --seed 1 --pp 2 --compression zstd; expect_code 0
    run env -u HDF5_PLUGIN_PATH "$P/bin/pmamba-ckpt" verify ck; expect_code 0; expect_out "OK"
    exit "$FAILS"
  ) || FAILS=$((FAILS + 1))
  for f in "$P"/bin/pmamba-*; do
    if ldd "$f" | grep -qF "$BUILD"; then fail "$f loads a library from the build tree"; fi
    if readelf -d "$f" | grep -E 'RPATH|RUNPATH' | grep -qF "$BUILD"; then fail "$f keeps a build-tree RPATH"; fi
  done
  # h5dump decodes a compressed shard with the installed plugin (absolute HDF5_PLUGIN_PATH).
  if command -v h5dump >/dev/null; then
    shard=$(ls "$T"/elsewhere/ck/step-*/stage-00-of-02.h5)
    run env HDF5_PLUGIN_PATH="$P/lib/pmamba/plugin" h5dump -d /model/backbone/embedding/weight -c 1,4 "$shard"
    expect_code 0; expect_out "DATASET"
  fi
else
  echo "note: no cmake_install.cmake in $BUILD; the install checks are skipped"
fi
finish
