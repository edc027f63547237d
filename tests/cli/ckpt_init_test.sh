#!/usr/bin/env bash
# pmamba-ckpt init + pmamba-eval --ckpt: the checkpoint issue's acceptance commands, the HDF5
# plugin, and error exits.
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"
PLUGIN=$BIN/../lib/plugin

run "$BIN/pmamba-ckpt" init "$T/c" --preset tiny --seed 3 --pp 2 --compression zstd
expect_code 0
[ -f "$T/c/step-00000000/manifest.json" ] || fail "no manifest"
[ -f "$T/c/step-00000000/stage-00-of-02.h5" ] && [ -f "$T/c/step-00000000/stage-01-of-02.h5" ] || fail "shards missing"
[ "$(cat "$T/c/latest")" = "step-00000000" ] || fail "latest does not name step-00000000"
[ "$(ls "$T/c/step-00000000" | wc -l)" -eq 3 ] || fail "unexpected files in the step directory"

TOK=1,2,3,4,5,6,7,8,9,10
run "$BIN/pmamba-eval" --preset tiny --seed 3 --tokens $TOK --logits-out "$T/ref.h5"; expect_code 0
run "$BIN/pmamba-eval" --ckpt "$T/c" --pp 1 --tokens $TOK --logits-out "$T/pp1.h5"; expect_code 0
run "$BIN/pmamba-eval" --ckpt "$T/c" --pp 3 --tokens $TOK --logits-out "$T/pp3.h5"; expect_code 0
run "$BIN/pmamba-eval" --ckpt "$T/c/step-00000000" --pp 5 --partition 0,1,1,2,0 --boundary summed --tokens $TOK --logits-out "$T/pp5.h5"; expect_code 0
for f in pp1 pp3 pp5; do h5diff "$T/ref.h5" "$T/$f.h5" || fail "h5diff ref.h5 $f.h5 reported differences"; done

# The loadable filter plugin lets plain h5dump decode compressed datasets.
out=$(HDF5_PLUGIN_PATH=$PLUGIN h5dump -d /model/backbone/norm_f/weight "$T/c/step-00000000/stage-01-of-02.h5" 2>&1)
echo "$out" | grep -q '(0): 1, 1, 1, 1' || { LAST_CMD="h5dump with plugin"; fail "h5dump did not print the values: $out"; }
out=$(HDF5_PLUGIN_PATH=$PLUGIN h5dump -d /model/backbone/layers/1/mixer/A_log "$T/c/step-00000000/stage-00-of-02.h5" 2>&1)
echo "$out" | grep -q '0.693147' || { LAST_CMD="h5dump A_log"; fail "h5dump did not decode A_log (log 2 expected): $out"; }

# A larger model's chunks (past 64 KiB) are mostly entropy coded without the match finder
# (docs/FORMAT.md 3.4); through the plugin, h5diff finds the values an uncompressed checkpoint
# of the same seed holds.
run "$BIN/pmamba-ckpt" init "$T/sz" --preset small --seed 5 --compression zstd:1; expect_code 0
run "$BIN/pmamba-ckpt" init "$T/sn" --preset small --seed 5 --compression none; expect_code 0
HDF5_PLUGIN_PATH=$PLUGIN h5diff "$T/sz/step-00000000/stage-00-of-01.h5" "$T/sn/step-00000000/stage-00-of-01.h5" /model /model
rc=$?
[ $rc -eq 0 ] || { LAST_CMD="h5diff zstd:1 vs none (small)"; fail "h5diff through the plugin exited $rc (1: differences, 2: an error)"; }

run "$BIN/pmamba-ckpt" init "$T/n" --preset tiny --seed 3 --pp 3 --partition 0,4,0 --compression none
expect_code 0
run "$BIN/pmamba-eval" --ckpt "$T/n" --tokens $TOK --logits-out "$T/n1.h5"; expect_code 0
h5diff "$T/ref.h5" "$T/n1.h5" || fail "uncompressed checkpoint gives other logits"

# Errors
run "$BIN/pmamba-ckpt" init "$T/x" --preset tiny --compression lz4
expect_code 2; expect_err_line "unknown compression 'lz4'"
run "$BIN/pmamba-ckpt" init "$T/x" --preset tiny --pp 9
expect_code 2; expect_err_line "more than allowed"
echo hello > "$T/file"
run "$BIN/pmamba-ckpt" init "$T/file" --preset tiny
expect_code 2; expect_err_line "is not a directory"
run "$BIN/pmamba-eval" --ckpt "$T" --tokens 1,2
expect_code 2; expect_err_line "not a committed checkpoint"
rm "$T/c/step-00000000/manifest.json"
run "$BIN/pmamba-eval" --ckpt "$T/c" --tokens 1,2
expect_code 2; expect_err_line "not a committed checkpoint"
finish
