#!/usr/bin/env bash
# pmamba-generate as a user runs it: stdout holds only the generated ids, the same at --pp 1 and
# at --pp 2/3 (stages as processes); greedy decoding reproduces transformers' generate() on the
# committed fixtures; --stop-token, --max-new-tokens, --json and bad input behave.
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"
HF=$PMAMBA_SOURCE_DIR/tests/fixtures/hf

"$BIN/pmamba-convert" import "$HF/mamba" "$T/c" --pp 2 --quiet || fail "import mamba"
"$BIN/pmamba-convert" import "$HF/bamba" "$T/b" --quiet || fail "import bamba"

# The acceptance command: sampling, the same tokens at --pp 2 and --pp 1.
SAMPLE="--prompt-tokens 1,2,3 --max-new-tokens 16 --seed 1 --temperature 0.8 --top-p 0.9"
# shellcheck disable=SC2086
run "$BIN/pmamba-generate" --ckpt "$T/c" $SAMPLE --pp 1
expect_code 0
cp "$T/out" "$T/pp1"
[ "$(wc -l <"$T/pp1")" -eq 1 ] || fail "stdout is not one line per prompt"
grep -qE '^[0-9]+(,[0-9]+){15}$' "$T/pp1" || fail "stdout is not 16 comma-separated ids"
expect_err "tokens/s"
# shellcheck disable=SC2086
run "$BIN/pmamba-generate" --ckpt "$T/c" $SAMPLE --pp 2
expect_code 0
cmp -s "$T/out" "$T/pp1" || fail "--pp 2 printed other tokens than --pp 1: $(cat "$T/out") vs $(cat "$T/pp1")"
# shellcheck disable=SC2086
run "$BIN/pmamba-generate" --ckpt "$T/c" $SAMPLE --pp 1 --seed 2
cmp -s "$T/out" "$T/pp1" && fail "seeds 1 and 2 gave the same tokens"

# Greedy == transformers' generate (the fixture's greedy_tokens), a hybrid at 3 processes.
run "$BIN/pmamba-generate" --ckpt "$T/b" --prompt-tokens 55,29,4,6 --max-new-tokens 10 --pp 3
expect_code 0
[ "$(cat "$T/out")" = "8,48,9,12,5,63,26,40,47,60" ] || fail "bamba greedy tokens differ from transformers'"

# Several prompts of unequal length in one batch, --stop-token, --json.
printf '46,28,31,25\n1 2\n\n7,7,7,7,7,7,7\n' >"$T/prompts"
run "$BIN/pmamba-generate" --ckpt "$T/c" --prompt-file "$T/prompts" --max-new-tokens 10 --stop-token 17 --pp 2
expect_code 0
[ "$(wc -l <"$T/out")" -eq 3 ] || fail "three prompts did not give three lines"
[ "$(head -1 "$T/out")" = "41,26,17" ] || fail "the first prompt did not stop at its stop token"
cp "$T/out" "$T/lines"
run "$BIN/pmamba-generate" --ckpt "$T/c" --prompt-file "$T/prompts" --max-new-tokens 10 --stop-token 17 --pp 1 --json
expect_code 0
expect_out '"stop":"stop_token"'
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); t=[",".join(map(str,p["tokens"])) for p in d["prompts"]]; open(sys.argv[2],"w").write("\n".join(t)+"\n")' \
  "$T/out" "$T/from_json" || fail "--json is not one JSON document"
cmp -s "$T/from_json" "$T/lines" || fail "--json holds other tokens than the lines at --pp 2"

# Bad input: exit code 2, one line.
run "$BIN/pmamba-generate" --ckpt "$T/c" --prompt-tokens 1,2,500
expect_code 2
expect_err_line "token '500' is not an id in [0, 61)"
run "$BIN/pmamba-generate" --ckpt "$T/c" --prompt-tokens 1 --top-p 0
expect_code 2
expect_err_line "--top-p must be in (0, 1]"
run "$BIN/pmamba-generate" --ckpt "$T/c" --prompt "hello"
expect_code 2
expect_err_line "byte-vocabulary model"

[ "$FAILS" -eq 0 ] && echo "all generate CLI checks passed"
exit $((FAILS > 0))
