#!/usr/bin/env bash
# pmamba-eval: split == unsplit through the tool, and bad arguments exit 2 with one line.
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"

run "$BIN/pmamba-eval" --preset tiny --seed 7 --pp 1 --tokens 1,2,3,4,5,6,7,8 --logits-out "$T/a.h5"
expect_code 0
run "$BIN/pmamba-eval" --preset tiny --seed 7 --pp 3 --partition 0,3,1 --tokens 1,2,3,4,5,6,7,8 --logits-out "$T/b.h5"
expect_code 0
run "$BIN/pmamba-eval" --preset tiny --seed 7 --pp 3 --partition 0,3,1 --boundary summed --tokens 1,2,3,4,5,6,7,8 --logits-out "$T/c.h5"
expect_code 0
run "$BIN/pmamba-eval" --preset tiny --seed 7 --pp 5 --boundary summed --tokens 1,2,3,4,5,6,7,8 --logits-out "$T/d.h5"
expect_code 0
for f in b c d; do
  h5diff "$T/a.h5" "$T/$f.h5" || fail "h5diff a.h5 $f.h5 reported differences"
done
run "$BIN/pmamba-eval" --preset tiny --seed 8 --tokens 1,2,3,4,5,6,7,8 --logits-out "$T/e.h5"
if h5diff -q "$T/a.h5" "$T/e.h5" >/dev/null 2>&1; then fail "different seeds gave equal logits"; fi
h5dump -d /logits -H "$T/a.h5" | grep -q 'DATASPACE  SIMPLE { ( 1, 8, 64 )' || fail "/logits is not (1, 8, 64)"
h5dump -d /logits -H "$T/a.h5" | grep -q 'H5T_IEEE_F32LE' || fail "/logits is not float32"

printf '1 2 3\n4,5,6\n' > "$T/toks.txt"
run "$BIN/pmamba-eval" --preset tiny --tokens-file "$T/toks.txt" --pp 2
expect_code 0
expect_out "sequences 2  tokens 3"

# On a task: the same loss and accuracy in one process and as 3 processes.
run "$BIN/pmamba-eval" --preset tiny --seed 7 --data selective-copy --samples 16 --pp 1
expect_code 0; ONE=$(grep '^loss' "$T/out")
run "$BIN/pmamba-eval" --preset tiny --seed 7 --data selective-copy --samples 16 --pp 3 --partition 2,0,2
expect_code 0; THREE=$(sed 's/^\[stage [0-9]*\] //' "$T/out" | grep '^loss')
[ -n "$ONE" ] && [ "$ONE" = "$THREE" ] || fail "PP 1 and PP 3 disagree: '$ONE' vs '$THREE'"

# Hand-launched ranks that disagree fail the handshake on both sides (and never hang).
RANK0_ARGS="--tokens 1,2,3,4" RANK1_ARGS="--tokens 1,2,3,5" \
    mismatched_ranks hs "$BIN/pmamba-eval" --preset tiny --seed 7 --pp 2 --timeout 20
for r in 0 1; do  # its own comparison, or the other side's report when that came first
  grep -q "handshake with stage [01] failed: input tokens differs" "$T/hs$r.err" || fail "rank $r: $(cat "$T/hs$r.err")"
done

# Bad arguments: exit 2, one line on stderr naming the problem.
run "$BIN/pmamba-eval" --preset tiny --pp 3 --partition 1,1,1 --tokens 1,2
expect_code 2; expect_err_line "sums to 3 layers but the model has n_layer = 4"
run "$BIN/pmamba-eval" --preset tiny --pp 6 --tokens 1,2
expect_code 2; expect_err_line "more than allowed"
run "$BIN/pmamba-eval" --preset nope --tokens 1,2
expect_code 2; expect_err_line "unknown preset 'nope'"
run "$BIN/pmamba-eval" --preset tiny --tokens 1,x,2
expect_code 2; expect_err_line "token 'x'"
run "$BIN/pmamba-eval" --preset tiny --tokens 1,64
expect_code 2; expect_err_line "token id 64 is out of range for vocab_size 64"
run "$BIN/pmamba-eval" --preset tiny --tokens 1,2 --boundary sideways
expect_code 2; expect_err_line "sideways"
run "$BIN/pmamba-eval" --tokens 1,2
expect_code 2
run "$BIN/pmamba-eval" --preset tiny --tokens 1,2 --bogus
expect_code 2; expect_err_line "bogus"
printf '{"d_model": 0, "n_layer": 2, "vocab_size": 10}' > "$T/bad.json"
run "$BIN/pmamba-eval" --config "$T/bad.json" --tokens 1,2
expect_code 2; expect_err_line "d_model must be > 0 but is 0"
printf '1 2 3\n4 5\n' > "$T/ragged.txt"
run "$BIN/pmamba-eval" --preset tiny --tokens-file "$T/ragged.txt"
expect_code 2; expect_err_line "sequence 2"
run "$BIN/pmamba-eval" --help
expect_code 0; expect_out "Examples:"
finish
