#!/usr/bin/env bash
# Readers never crash on corrupt input and every tool agrees with verify: a corrupt HDF5 global
# heap, manifests that cannot be right (a negative train.step, fractional integers, a huge
# model, differing tied copies), reshard verifying what it copies, diff saying how it
# compared, `latest` missing after a committed rename, a file-size limit (handled like a full
# disk, the same exit code at every PP degree), a thread that cannot start. Version-1
# checkpoints still load and resume bitwise.
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"
FIX=$PMAMBA_SOURCE_DIR/tests/fixtures
micro=(--config "$FIX/micro.json" --data selective-copy --copy-tokens 2 --copy-slots 6 --microbatches 2
       --microbatch-size 2 --steps 4 --seed 5 --compression zstd --threads 1 --timeout 5 --quiet)
# Edits a manifest with Python (version 1: no training-state digest to keep right).
edit() {  # edit ROOT 'python statement on j'
  python3 - "$1" "$2" <<'PY'
import json, os, sys
root, stmt = sys.argv[1], sys.argv[2]
step = open(os.path.join(root, "latest")).read().strip()
path = os.path.join(root, step, "manifest.json")
j = json.load(open(path))
exec(stmt)
json.dump(j, open(path, "w"))
PY
}

# --- a corrupt global heap in a version-1 shard: an error from every tool, never a crash ---
cp -r "$FIX/v1-corrupt-heap" "$T/heap"
run "$BIN/pmamba-ckpt" verify "$T/heap"; expect_code 1; expect_out "corrupt global heap"
run "$BIN/pmamba-eval" --ckpt "$T/heap" --tokens 1,2; expect_code 2; expect_err_line "corrupt global heap"
run "$BIN/pmamba-reshard" "$T/heap" "$T/heap-out" --pp 1; expect_code 2; expect_err_line "corrupt global heap"
[ -e "$T/heap-out" ] && fail "a failed reshard left its output"
run "$BIN/pmamba-train" --resume "$T/heap" --ckpt-dir "$T/heap-run" --quiet; expect_code 2; expect_err_line "corrupt global heap"
run "$BIN/pmamba-ckpt" diff "$T/heap" "$FIX/v1-init"; expect_code 2; expect_err_line "corrupt global heap"

# --- version-1 checkpoints: verified, and resumed bitwise like the same state in today's format ---
# (Not like a fresh run here: the fixture's two steps ran on the machine that wrote it, and
# OpenBLAS picks its kernels by CPU, so a fresh run on an AVX2 machine differs in the last ulp.)
run "$BIN/pmamba-ckpt" verify "$FIX/v1-trained"; expect_code 0
run "$BIN/pmamba-train" "${micro[@]}" --ckpt-dir "$T/fresh"; expect_code 0
run "$BIN/pmamba-reshard" "$FIX/v1-trained" "$T/v1-now" --pp 1 --quiet; expect_code 0
run "$BIN/pmamba-train" --resume "$T/v1-now" --ckpt-dir "$T/from-now" --quiet --timeout 5 --threads 1; expect_code 0
run "$BIN/pmamba-train" --resume "$FIX/v1-trained" --ckpt-dir "$T/from-v1" --quiet --timeout 5 --threads 1; expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/from-v1" "$T/from-now"; expect_code 0; expect_out "EQUAL"
[ -e "$FIX/v1-trained/.pmamba-lock" ] && fail "resuming wrote into the fixture"
# A root of version-1 checkpoints: --resume auto continues that run (its checkpoints are the
# run's own for --keep-last); a new run refuses it, and --overwrite deletes them after its commit.
cp -r "$FIX/v1-trained" "$T/v1a"
run "$BIN/pmamba-train" --resume auto --ckpt-dir "$T/v1a" --keep-last 1 --quiet --timeout 5; expect_code 0
[ "$(ls "$T/v1a" | grep -c '^step-')" = 1 ] || fail "--keep-last 1 kept $(ls "$T/v1a") in a version-1 root"
cp -r "$FIX/v1-trained" "$T/v1b"
run "$BIN/pmamba-train" "${micro[@]}" --stop-after 1 --ckpt-every 1 --ckpt-dir "$T/v1b"; expect_code 2
expect_err_line "holds checkpoints of another run (a version-1 run)"
run "$BIN/pmamba-train" "${micro[@]}" --stop-after 1 --ckpt-every 1 --ckpt-dir "$T/v1b" --overwrite; expect_code 0
[ -e "$T/v1b/step-00000002" ] && fail "--overwrite left the version-1 run's checkpoint"
[ "$(cat "$T/v1b/latest")" = step-00000001 ] || fail "--overwrite: latest is $(cat "$T/v1b/latest")"

# --- manifests that cannot be right are refused before anything is loaded ---
cp -r "$FIX/v1-trained" "$T/neg"; edit "$T/neg" 'j["train"]["step"] = -100'
run "$BIN/pmamba-train" --resume "$T/neg" --ckpt-dir "$T/neg-run" --quiet; expect_code 2
expect_err_line "train.step must be an integer in [0,"
run "$BIN/pmamba-ckpt" verify "$T/neg"; expect_code 1; expect_out "train.step must be an integer"
cp -r "$FIX/v1-trained" "$T/frac"; edit "$T/frac" 'j["tensors"]["backbone.layers.0.mixer.D"]["param"]["shape"] = [16.5]'
run "$BIN/pmamba-eval" --ckpt "$T/frac" --tokens 1,2; expect_code 2; expect_err_line "must be an integer, found 16.5"
cp -r "$FIX/v1-trained" "$T/tie"; edit "$T/tie" 'j["tensors"]["lm_head.weight"]["xxh3_64"]["param"] = "0123456789abcdef"'
run "$BIN/pmamba-eval" --ckpt "$T/tie" --tokens 1,2; expect_code 2; expect_err_line "tied copies differ"
run "$BIN/pmamba-train" --resume "$T/tie" --ckpt-dir "$T/tie-run" --quiet; expect_code 2; expect_err_line "tied copies differ"
# A consistent manifest of a model of d_model 2^20 (shapes as docs/FORMAT.md section 2 gives them):
# refused from what the shards hold (their config, their shapes), with nothing allocated.
cp -r "$FIX/v1-trained" "$T/huge"
edit "$T/huge" '
c = j["config"]; d = 1 << 20; c["d_model"] = d; c["dt_rank"] = (d + 15) // 16
E, N, K, R, V = c["expand"] * d, c["d_state"], c["d_conv"], c["dt_rank"], c["vocab_size"]
shapes = {"embedding.weight": [V, d], "norm.weight": [d], "in_proj.weight": [2 * E, d], "conv1d.weight": [E, 1, K],
          "conv1d.bias": [E], "x_proj.weight": [R + 2 * N, E], "dt_proj.weight": [E, R], "dt_proj.bias": [E],
          "A_log": [E, N], "D": [E], "out_proj.weight": [d, E], "norm_f.weight": [d]}
for fqn, e in j["tensors"].items():
    for slot in ("param", "exp_avg", "exp_avg_sq"):
        if slot in e:
            e[slot]["shape"] = next(s for k, s in shapes.items() if fqn.endswith(k))
            n = 1
            for x in e[slot]["shape"]: n *= x
            e[slot]["raw_bytes"] = 4 * n'
run timeout 60 "$BIN/pmamba-eval" --ckpt "$T/huge" --tokens 1,2; expect_code 2; expect_err_line "was written for another model config"
run timeout 60 "$BIN/pmamba-ckpt" verify "$T/huge"; expect_code 1

# --- tools agree with verify: reshard checks what it copies, diff says how it compared ---
run "$BIN/pmamba-ckpt" init "$T/c" --preset tiny --seed 3 --pp 2 --compression zstd; expect_code 0
cp -r "$T/c" "$T/bad"
"$BIN/pmamba_test_corrupt" "$T/bad/step-00000000/stage-01-of-02.h5" /model/backbone/layers/3/mixer/in_proj/weight >/dev/null
run "$BIN/pmamba-reshard" "$T/bad" "$T/bad-out" --pp 1; expect_code 1
expect_err_line "digest mismatch for 'backbone.layers.3.mixer.in_proj.weight'"
[ -e "$T/bad-out" ] && fail "a reshard of a corrupt input left its output"
run "$BIN/pmamba-reshard" "$T/bad" "$T/bad-copy" --pp 1 --no-verify --quiet; expect_code 0
run "$BIN/pmamba-ckpt" verify "$T/bad-copy"; expect_code 1
run "$BIN/pmamba-ckpt" diff "$T/c" "$T/bad"; expect_code 0
expect_out "compared: recorded xxh3-64 digests; equal digests count as equal tensors without being read"
run "$BIN/pmamba-ckpt" diff "$T/c" "$T/bad" --decode; expect_code 2
expect_err_line "digest mismatch for 'backbone.layers.3.mixer.in_proj.weight'"
run "$BIN/pmamba-ckpt" diff "$T/c" "$T/c" --decode; expect_code 0; expect_out "every tensor decoded"

# --- `latest` missing or older after a committed rename: the newest committed step is found ---
run "$BIN/pmamba-train" "${micro[@]}" --stop-after 3 --ckpt-every 1 --ckpt-dir "$T/L"; expect_code 0
rm "$T/L/latest"
run "$BIN/pmamba-ckpt" verify "$T/L"; expect_code 0; expect_out "step-00000003"; expect_out "note: "
run "$BIN/pmamba-train" --resume auto --ckpt-dir "$T/L" --quiet --timeout 5; expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/L" "$T/fresh"; expect_code 0
echo step-00000002 > "$T/L/latest"
run "$BIN/pmamba-ckpt" info "$T/L" --json; expect_code 0; expect_out '"step":4'

# --- a file-size limit fails a save like a full disk: exit 2 at every PP degree, nothing left ---
for pp in 1 2; do
  run bash -c "ulimit -f 60; exec $BIN/pmamba-train --preset tiny --data selective-copy --steps 2 --ckpt-every 1 \
      --compression none --pp $pp --timeout 5 --quiet --ckpt-dir $T/fsize$pp"
  expect_code 2; expect_err "File too large"
  ls "$T/fsize$pp" | grep -q "\.tmp" && fail "a failed save left $(ls "$T/fsize$pp")"
done
run bash -c "ulimit -f 60; exec $BIN/pmamba-reshard $T/c $T/rs --pp 1 --compression none --quiet"
expect_code 2; expect_err "File too large"
[ -e "$T/rs" ] && fail "a failed reshard left its output"
run "$BIN/pmamba-reshard" "$T/c" "$T/rs" --pp 1 --compression none --quiet; expect_code 0

# --- a thread that cannot be created is a clear error, not an abort ---
PMAMBA_FAULT=thread@1 run "$BIN/pmamba-ckpt" verify "$T/c" --threads 2; expect_code 2
expect_err_line "cannot start thread 2 of 2 for checkpoint I/O"
finish
