#!/usr/bin/env bash
# Optional: transformers loads pmamba's exports. For each committed fixture folder, import it
# (at PP 2), export it (sharded), and have transformers' from_pretrained load the export with no
# missing or unexpected keys and give the fixture's logits and greedy tokens. Also models
# pmamba initialised itself (one with a padded vocabulary): transformers' logits of the export
# equal pmamba-eval's. Needs Python with transformers: PMAMBA_HF_PYTHON (default python3); exits 77
# (reported by CTest as skipped) when transformers is not importable.
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"
HF=$PMAMBA_SOURCE_DIR/tests/fixtures/hf
PY=${PMAMBA_HF_PYTHON:-python3}
CHECK=$PMAMBA_SOURCE_DIR/tests/cli/hf_from_pretrained_check.py
if ! "$PY" -c 'import transformers, torch, safetensors' >"$T/probe" 2>&1; then
  echo "SKIPPED: transformers is not importable with $PY (set PMAMBA_HF_PYTHON to a Python that has it):"
  tail -1 "$T/probe"
  exit 77
fi
for m in mamba mamba_untied mamba2 bamba; do
  "$BIN/pmamba-convert" import "$HF/$m" "$T/c-$m" --pp 2 --quiet || fail "import $m"
  "$BIN/pmamba-convert" export "$T/c-$m" "$T/out-$m" --max-shard-size 40KB --quiet || fail "export $m"
  run "$PY" "$CHECK" "$T/out-$m" "$HF/$m/expected.safetensors"
  expect_code 0
  expect_out PASSED
done
# pmamba's own models: tiny, and a vocabulary of 61 padded to 64 rows (transformers gets 64).
echo '{"d_model": 24, "n_layer": 3, "vocab_size": 61, "pad_vocab_size_multiple": 8, "d_state": 4}' >"$T/padded.json"
for own in "--preset tiny" "--config $T/padded.json"; do
  rm -rf "$T/own" "$T/own-hf"
  # shellcheck disable=SC2086
  "$BIN/pmamba-ckpt" init "$T/own" $own --seed 3 --pp 2 >/dev/null || fail "init $own"
  "$BIN/pmamba-eval" --ckpt "$T/own" --tokens 1,5,9,2,33,7,7,1 --logits-out "$T/own.safetensors" >/dev/null || fail "eval"
  "$BIN/pmamba-convert" export "$T/own" "$T/own-hf" --quiet || fail "export $own"
  run "$PY" "$CHECK" "$T/own-hf" "$T/own.safetensors" --no-greedy
  expect_code 0
  expect_out PASSED
done
[ "$FAILS" -eq 0 ] && echo "all transformers checks passed"
exit $((FAILS > 0))
