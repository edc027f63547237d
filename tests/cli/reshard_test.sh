#!/usr/bin/env bash
# pmamba-reshard and pmamba-ckpt info/ls/verify/diff: the reshard issue's acceptance commands,
# outputs, --json and exit codes.
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"
json_get() { python3 -c "import json,sys; d=json.load(open('$T/out')); print($1)"; }

run "$BIN/pmamba-ckpt" init "$T/c" --preset tiny --seed 3 --pp 4 --compression zstd; expect_code 0
run "$BIN/pmamba-reshard" "$T/c" "$T/m" --pp 1; expect_code 0; expect_out "1 stages"
run "$BIN/pmamba-reshard" "$T/m" "$T/r" --pp 3 --partition 1,2,1; expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/c" "$T/r"; expect_code 0; expect_out "EQUAL"
run "$BIN/pmamba-ckpt" verify "$T/r"; expect_code 0; expect_out "OK"
run "$BIN/pmamba-reshard" "$T/r" "$T/n" --pp 2 --compression none --verify --quiet; expect_code 0
[ -s "$T/out" ] && fail "--quiet printed something"
run "$BIN/pmamba-ckpt" diff "$T/c" "$T/n" --json; expect_code 0
[ "$(json_get 'd["equal"], d["compared"], d["different"]')" = "True 172 0" ] || fail "diff --json: $(cat "$T/out")"

# info / ls, text and JSON
run "$BIN/pmamba-ckpt" info "$T/r"; expect_code 0
expect_out "layout      3 stages"; expect_out "layers [1, 3)"; expect_out "parameters  35,744"
run "$BIN/pmamba-ckpt" info "$T/r" --json; expect_code 0
[ "$(json_get 'len(d["layout"]), d["layout"][1]["layers"], d["parameters"], d["step"]')" = "3 [1, 3] 35744 0" ] || fail "info --json"
run "$BIN/pmamba-ckpt" ls "$T/r"; expect_code 0
[ "$(tail -n +2 "$T/out" | wc -l)" -eq 43 ] || fail "ls lists $(tail -n +2 "$T/out" | wc -l) rows, expected 43 FQNs"
expect_out "-> alias of backbone.embedding.weight"
grep -q '^backbone.layers.2.mixer.A_log  *(64, 8)  *float32  *stage 1' "$T/out" || fail "ls row for layer 2 A_log"
run "$BIN/pmamba-ckpt" ls "$T/r" --all --json; expect_code 0
[ "$(json_get 'len(d["tensors"])')" = "169" ] || fail "ls --all --json rows"

# A flipped byte inside a compressed dataset: verify exits 1 and names the FQN.
SHARD=$T/r/step-00000000/stage-01-of-03.h5
"$BIN/pmamba_test_corrupt" "$SHARD" /model/backbone/layers/2/mixer/in_proj/weight >/dev/null || fail "corrupt helper"
run "$BIN/pmamba-ckpt" verify "$T/r"; expect_code 1
expect_out "backbone.layers.2.mixer.in_proj.weight"; expect_out "INVALID"
run "$BIN/pmamba-ckpt" verify "$T/r" --json; expect_code 1
[ "$(json_get 'd["ok"], len(d["problems"])')" = "False 1" ] || fail "verify --json"
# ... diff sees it too (the digest no longer matches what is read) and reshard refuses it.
run "$BIN/pmamba-reshard" "$T/r" "$T/bad" --pp 2 --compression none
[ "$CODE" -eq 1 ] || [ "$CODE" -eq 2 ] || fail "reshard of a corrupt input exited $CODE"
expect_err "backbone.layers.2.mixer.in_proj.weight"
[ -e "$T/bad" ] && fail "a failed reshard left output behind"

# Impossible layouts exit 2 before writing anything.
run "$BIN/pmamba-reshard" "$T/c" "$T/x" --pp 7
expect_code 2; expect_err_line "more than allowed"
run "$BIN/pmamba-reshard" "$T/c" "$T/x" --pp 3 --partition 2,2,2
expect_code 2; expect_err_line "sums to 6 layers"
[ -e "$T/x" ] && fail "an impossible reshard created its output"
run "$BIN/pmamba-reshard" "$T/c" "$T/m" --pp 2
expect_code 2; expect_err_line "already exists"
run "$BIN/pmamba-reshard" "$T/c" "$T/m" --pp 2 --force --quiet; expect_code 0
run "$BIN/pmamba-reshard" "$T/nothing" "$T/y" --pp 2
expect_code 2; expect_err_line "does not exist"
run "$BIN/pmamba-reshard" "$T/c" "$T/y" --pp 2 --compression brotli
expect_code 2; expect_err_line "unknown compression 'brotli'"

# diff: different checkpoints exit 1; tolerance mode; missing FQNs.
run "$BIN/pmamba-ckpt" init "$T/d" --preset tiny --seed 4 --pp 2; expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/c" "$T/d" --params-only --top 0; expect_code 1; expect_out "DIFFERENT"
expect_out "different  backbone.embedding.weight"
run "$BIN/pmamba-ckpt" diff "$T/c" "$T/d" --atol 10; expect_code 0; expect_out "within tol"
printf '{"d_model": 32, "n_layer": 3, "vocab_size": 64, "d_state": 8}' > "$T/cfg3.json"
run "$BIN/pmamba-ckpt" init "$T/e" --config "$T/cfg3.json" --seed 3; expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/c" "$T/e" --json; expect_code 1
[ "$(json_get 'd["config_equal"], "backbone.layers.3.mixer.D" in d["only_in_a"]')" = "False True" ] || fail "diff missing FQNs"

# Unreadable input / usage errors exit 2.
run "$BIN/pmamba-ckpt" verify "$T"; expect_code 2; expect_err_line "not a committed checkpoint"
run "$BIN/pmamba-ckpt" diff "$T/c"; expect_code 2
run "$BIN/pmamba-ckpt" info "$T/nothing"; expect_code 2; expect_err_line "does not exist"
run "$BIN/pmamba-ckpt"; expect_code 2
run "$BIN/pmamba-ckpt" frobnicate; expect_code 2
finish
