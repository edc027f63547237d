#!/usr/bin/env bash
# pmamba-convert and fine-tuning from imported weights, driven as a user would: import a
# transformers folder (save_pretrained's own files) at PP 2, evaluate it at PP 1, export it
# (single file and sharded), re-import it, refuse bad input with exit code 2 and one line, and
# start a new training run from it with --init-from.
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"
HF=$PMAMBA_SOURCE_DIR/tests/fixtures/hf

run "$BIN/pmamba-convert" import "$HF/mamba" "$T/c" --pp 2
expect_code 0
expect_out "imported MambaForCausalLM"
expect_out "vocab 61 (padded 61)"
run "$BIN/pmamba-ckpt" verify "$T/c"
expect_code 0
run "$BIN/pmamba-ckpt" info "$T/c"
expect_out "no optimizer state"
# The acceptance run: evaluate at another PP degree and write the logits for numpy/transformers.
run "$BIN/pmamba-eval" --ckpt "$T/c" --pp 1 --tokens 46,28,31,25,41,26 --logits-out "$T/a.safetensors"
expect_code 0
[ -s "$T/a.safetensors" ] || fail "no logits file"

run "$BIN/pmamba-convert" export "$T/c" "$T/exp" --format hf
expect_code 0
expect_out "exported MambaForCausalLM: 22 tensors"
for f in config.json model.safetensors; do [ -f "$T/exp/$f" ] || fail "export lacks $f"; done
grep -q '"backbone.embeddings.weight"' "$T/exp/model.safetensors" || fail "export does not use transformers' names"
grep -q '"lm_head.weight"' "$T/exp/model.safetensors" && fail "export stores the tied lm_head"
run "$BIN/pmamba-convert" export "$T/c" "$T/sharded" --max-shard-size 20KB --dtype bfloat16
expect_code 0
[ -f "$T/sharded/model.safetensors.index.json" ] || fail "sharded export has no index"
grep -q '"torch_dtype": "bfloat16"' "$T/sharded/config.json" || fail "bfloat16 export says another torch_dtype"
run "$BIN/pmamba-convert" import "$T/sharded" "$T/c16"
expect_code 0
run "$BIN/pmamba-convert" import "$T/exp" "$T/again" --pp 1
expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/c" "$T/again" --params-only --decode
expect_code 0
expect_out "EQUAL"

# Bad input: exit code 2 and one line naming what is wrong; nothing is left behind.
run "$BIN/pmamba-convert" import "$T/nowhere" "$T/x"
expect_code 2
expect_err_line "is not a directory"
mkdir -p "$T/broken" && cp "$HF/mamba/config.json" "$T/broken/" && head -c 100 "$HF/mamba/model.safetensors" >"$T/broken/model.safetensors"
run "$BIN/pmamba-convert" import "$T/broken" "$T/x"
expect_code 2
expect_err_line "model.safetensors"
[ -e "$T/x" ] && fail "a failed import left $T/x"
sed 's/"silu"/"gelu"/' "$HF/mamba/config.json" >"$T/broken/config.json" && cp "$HF/mamba/model.safetensors" "$T/broken/"
run "$BIN/pmamba-convert" import "$T/broken" "$T/x"
expect_code 2
expect_err_line 'hidden_act = "gelu" is not supported'
run "$BIN/pmamba-convert" export "$T/c" "$T/exp"
expect_code 2
expect_err_line "already exists and is not an empty directory"
run "$BIN/pmamba-convert" export "$T/c" "$T/y" --max-shard-size 5XB
expect_code 2
expect_err_line "is not a size"

# Fine-tuning: a new run (step 0, fresh optimizer, its own run id) from the imported weights at
# PP 2. With a learning rate of 0 one step changes nothing, so its checkpoint holds the imported
# weights bit for bit.
run "$BIN/pmamba-train" --init-from "$T/c" --pp 2 --steps 1 --lr 0 --min-lr 0 --warmup 0 --ckpt-dir "$T/run" \
  --data selective-copy --quiet
expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/c" "$T/run" --params-only --decode
expect_code 0
expect_out "EQUAL"
run "$BIN/pmamba-ckpt" info "$T/run" --json
expect_out '"step":1,'
expect_out '"has_optimizer":true'
run_id_of() { "$BIN/pmamba-ckpt" info "$1" --json | grep -o '"run_id":"[0-9a-f]*"'; }
[ -n "$(run_id_of "$T/c")" ] || fail "no run id in the imported checkpoint"
[ "$(run_id_of "$T/c")" != "$(run_id_of "$T/run")" ] || fail "the fine-tuning run kept the imported checkpoint's run id"
grep -q '"initialized_from"' "$T/run/step-00000001/manifest.json" || fail "the run does not record where its weights came from"
# A weights-only checkpoint cannot be resumed (no optimizer state, no data position).
run "$BIN/pmamba-train" --resume "$T/c" --ckpt-dir "$T/run2" --steps 2 --data selective-copy --quiet
expect_code 2
expect_err_line "holds weights only"
expect_err "--init-from"
[ -e "$T/run2" ] && fail "a refused resume created $T/run2"
run "$BIN/pmamba-train" --init-from "$T/c" --resume "$T/run" --steps 2 --data selective-copy --quiet
expect_code 2
expect_err_line "give one of them"
# --resume auto with --init-from continues the fine-tuning run once it has a checkpoint.
run "$BIN/pmamba-train" --init-from "$T/c" --resume auto --pp 1 --steps 1 --stop-after 0 --lr 0 --min-lr 0 --warmup 0 \
  --ckpt-dir "$T/run" --data selective-copy
expect_code 0
expect_out "resumed from"

[ "$FAILS" -eq 0 ] && echo "all convert CLI checks passed"
exit $((FAILS > 0))
