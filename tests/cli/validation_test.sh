#!/usr/bin/env bash
# Options that can only fail later, or that cannot be right, are refused at start with exit 2
# and one line naming the option (printed once, before any stage is spawned), and the data is
# identified by its content: a file changed under a resume is refused, a moved one accepted.
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"
common=(--preset tiny --copy-tokens 4 --copy-slots 12 --microbatches 2 --microbatch-size 2 --quiet)
refused() {  # refused "what stderr says" args...: exit 2, one line, nothing written
  local says=$1; shift
  local extra=()
  [[ " $* " == *" --timeout "* ]] || extra+=(--timeout 5)
  [[ " $* " == *" --data "* ]] || extra+=(--data selective-copy)
  run timeout 60 "$BIN/pmamba-train" "${common[@]}" "${extra[@]}" --steps 2 --pp 2 --ckpt-dir "$T/never" "$@"
  expect_code 2; expect_err_line "$says"
  [ -e "$T/never" ] && { fail "a refused run created its checkpoint root"; rm -rf "$T/never"; }
}
refused "--lr must be a finite number in [0, inf], found nan" --lr nan
refused "--lr must be a finite number" --lr inf
refused "--lr must be a finite number in [0, inf], found -0.1" --lr -0.1
refused "--min-lr must be a finite number in [0, 0.001]" --min-lr 0.01
refused "--beta1 must be a finite number in [0, 1)" --beta1 1
refused "--beta2 must be a finite number in [0, 1)" --beta2 -0.5
refused "--weight-decay must be a finite number" --weight-decay nan
refused "--clip must be a finite number" --clip -1
refused "--timeout must be a finite number of seconds in (0, 604800]" --timeout nan
refused "--timeout must be a finite number of seconds" --timeout 0
refused "--threads must be in [0, " --threads 100000
refused "--threads must be in [0, " --threads -1
refused "--seed must be an integer in [0, 18446744073709551615], found '-1'" --seed -1
refused "--seed must be an integer in [0, 18446744073709551615], found '18446744073709551616'" --seed 18446744073709551616
refused "--stop-after must be >= 0" --stop-after -1
refused "--ckpt-every must be >= 0" --ckpt-every -3
refused "--keep-last must be >= 0" --keep-last -1
refused "--warmup must be >= 0" --warmup -1
refused "--seq-len must be >= 0" --data induction --seq-len -5
refused "--compression: unknown compression 'lz4'" --compression lz4
refused "--metrics '$T/no/such/dir/m.jsonl': the directory" --metrics "$T/no/such/dir/m.jsonl"
run "$BIN/pmamba-train" "${common[@]}" --data selective-copy --steps 1 --resume auto; expect_code 2
expect_err_line "--resume auto resumes the newest checkpoint in --ckpt-dir"
# A configuration error is found before any stage starts: one line, not one per stage.
run "$BIN/pmamba-train" "${common[@]}" --data selective-copy --steps 1 --pp 6; expect_code 2; expect_err_line "more than allowed"
grep -q "\[stage" "$T/err" && fail "a stage was started for a configuration error"
# The model must fit the machine before anything is allocated.
printf '{"d_model": 1048576, "n_layer": 1, "vocab_size": 64}' > "$T/huge.json"
run timeout 60 "$BIN/pmamba-train" --config "$T/huge.json" --data selective-copy --steps 1; expect_code 2
expect_err_line "needs "; expect_err "of memory (RAM + swap)"
run timeout 60 "$BIN/pmamba-ckpt" init "$T/huge" --config "$T/huge.json"; expect_code 2; expect_err_line "needs "
[ -e "$T/huge" ] && fail "a refused init created its output"
run timeout 60 "$BIN/pmamba-eval" --config "$T/huge.json" --tokens 1,2; expect_code 2; expect_err_line "needs "

# The checkpoint root must have room for one checkpoint (an estimate from the layout).
PMAMBA_FAULT=no-room run "$BIN/pmamba-train" "${common[@]}" --data selective-copy --steps 2 --pp 2 --ckpt-dir "$T/full"
expect_code 2; expect_err_line "has 1024 bytes (1.0 KiB) free but one checkpoint of this run needs about"
[ -e "$T/full" ] && fail "a refused run created its checkpoint root"

# Evaluation and the checkpoint tools check theirs the same way.
run "$BIN/pmamba-eval" --preset tiny --data selective-copy --first-sample -1; expect_code 2; expect_err_line "--first-sample must be >= 0"
run "$BIN/pmamba-eval" --preset tiny --data selective-copy --samples 0; expect_code 2; expect_err_line "--samples must be >= 1"
run "$BIN/pmamba-eval" --preset tiny --tokens 1,2 --seed -1; expect_code 2; expect_err_line "--seed must be an integer"
run "$BIN/pmamba-eval" --preset tiny --tokens 1,2 --threads 100000; expect_code 2; expect_err_line "--threads must be in"
run "$BIN/pmamba-eval" --preset tiny --tokens 1,2 --timeout -1; expect_code 2; expect_err_line "--timeout must be"
run "$BIN/pmamba-ckpt" init "$T/c" --preset tiny --seed 3; expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/c" "$T/c" --atol nan; expect_code 2; expect_err_line "--atol must be a finite number >= 0"
run "$BIN/pmamba-ckpt" diff "$T/c" "$T/c" --rtol -1; expect_code 2; expect_err_line "--rtol must be a finite number >= 0"
run "$BIN/pmamba-ckpt" verify "$T/c" --threads 100000; expect_code 2; expect_err_line "--threads must be in"
run "$BIN/pmamba-ckpt" init "$T/d" --preset tiny --seed 18446744073709551616; expect_code 2; expect_err_line "--seed must be"
run "$BIN/pmamba-reshard" "$T/c" "$T/r" --pp 2 --threads -2; expect_code 2; expect_err_line "--threads must be in"

# --- data files: regular files of bounded size, identified by content ---
run timeout 30 "$BIN/pmamba-train" --preset small --data text:/dev/zero --steps 1; expect_code 2
expect_err_line "is a character device, not a regular file"
mkfifo "$T/fifo"
run timeout 30 "$BIN/pmamba-train" --preset small --data "text:$T/fifo" --steps 1; expect_code 2; expect_err_line "is a FIFO"
run timeout 30 "$BIN/pmamba-train" --config /dev/zero --data selective-copy --steps 1; expect_code 2
expect_err_line "is a character device"
python3 -c 'import random; random.seed(1); print("".join(random.choice("abcdefgh \n") for _ in range(4000)))' > "$T/book.txt"
text=(--preset small --data "text:$T/book.txt" --seq-len 16 --microbatches 1 --microbatch-size 2 --steps 4 --timeout 5 --quiet)
run "$BIN/pmamba-train" "${text[@]}" --stop-after 2 --ckpt-dir "$T/t"; expect_code 0
cp "$T/book.txt" "$T/moved.txt"
printf 'x' >> "$T/book.txt"
run "$BIN/pmamba-train" --resume "$T/t" --ckpt-dir "$T/t2" --quiet --timeout 5; expect_code 2
expect_err_line "is not what the run resumed from"
expect_err "it had 4001 bytes with xxh3-64"
# The same bytes under another name are the same data.
run "$BIN/pmamba-train" --resume "$T/t" --data "text:$T/moved.txt" --ckpt-dir "$T/t3" --quiet --timeout 5; expect_code 0
[ "$(cat "$T/t3/latest")" = step-00000004 ] || fail "the resume from a moved data file did not finish"
# A data path that is not UTF-8 cannot be recorded in a checkpoint's JSON: refused up front.
cp "$T/moved.txt" "$T/"$'\xff'"name.txt"
run "$BIN/pmamba-train" --preset small --data "text:$T/"$'\xff'"name.txt" --seq-len 16 --steps 1 --quiet; expect_code 2
expect_err_line "is not valid UTF-8"
# JSON reports of a checkpoint whose path is not UTF-8 are still JSON.
cp -r "$T/t" "$T/"$'\xfe'"ckpt"
run "$BIN/pmamba-ckpt" verify "$T/"$'\xfe'"ckpt" --json; expect_code 0
python3 -c 'import json, sys; json.loads(open(sys.argv[1], "rb").read().decode("utf-8"))' "$T/out" || fail "verify --json is not JSON"
# Stages reading different files fail the handshake, whatever the file names.
printf 'abcdefgh%.0s' $(seq 1 500) > "$T/one.txt"; printf 'hgfedcba%.0s' $(seq 1 500) > "$T/two.txt"
RANK0_ARGS="--data text:$T/one.txt" RANK1_ARGS="--data text:$T/two.txt" \
    mismatched_ranks data "$BIN/pmamba-train" --preset small --seq-len 16 --microbatches 1 --steps 2 --pp 2 --timeout 5 --quiet
for r in 0 1; do
  grep -q "handshake with stage [01] failed: data options differs" "$T/data$r.err" || fail "rank $r: $(cat "$T/data$r.err")"
done
finish
