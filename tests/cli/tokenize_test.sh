#!/usr/bin/env bash
# scripts/tokenize.py reproduces the committed fixture byte for byte (tests/fixtures/data/tok.*,
# which the C++ reader tests read), and refuses bad input with one line. Needs Python with the
# `tokenizers` package: PMAMBA_TOKENIZE_PYTHON (default python3); exits 77 (skipped) without it.
BIN=$1
source "$(dirname "$0")/lib.sh"
PY=${PMAMBA_TOKENIZE_PYTHON:-python3}
if ! "$PY" -c 'import tokenizers' 2>/dev/null; then
  echo "SKIP: $PY has no 'tokenizers' package (pip install tokenizers; or set PMAMBA_TOKENIZE_PYTHON)"
  exit 77
fi
FIX=$PMAMBA_SOURCE_DIR/tests/fixtures/data
run "$PY" "$PMAMBA_SOURCE_DIR/scripts/tokenize.py" --tokenizer "$FIX/tokenizer.json" --input "$FIX/corpus.jsonl" \
    --output "$T/d" --append-eod
expect_code 0; expect_out "documents:  199"
cmp -s "$T/d.bin" "$FIX/tok.bin" || fail "tok.bin differs from the committed fixture"
cmp -s "$T/d.idx" "$FIX/tok.idx" || fail "tok.idx differs from the committed fixture"
printf '{"text": "a"}\n{"body": "b"}\n' > "$T/bad.jsonl"
run "$PY" "$PMAMBA_SOURCE_DIR/scripts/tokenize.py" --tokenizer "$FIX/tokenizer.json" --input "$T/bad.jsonl" --output "$T/e"
expect_code 2; expect_err "bad.jsonl:2: no key 'text'"
[ -e "$T/e.idx" ] && fail "a failed run left an index behind"
# What it wrote trains: the model's vocabulary is checked against its largest id.
run "$BIN/pmamba-train" --preset tiny --data "$T/d" --steps 1
expect_code 2; expect_err_line "needs a vocabulary of 256"
finish
