#!/usr/bin/env bash
# Batched, bounded evaluation: peak RSS and tokens/s of pmamba-eval on a tiny checkpoint over
# 1,000 / 10,000 / 100,000 selective-copy samples at --batch-size 256, side by side with the same
# samples as one batch (what pmamba-eval did before streaming: every sample in one forward),
# where that fits. Then the cost of validation during training: a tiny run on the fixture
# corpus with and without --eval-every 5. Paired runs, 2 threads, medians over ROUNDS.
#   Usage: bench/eval_bench.sh BUILD_DIR [ROUNDS]
set -euo pipefail
BIN=${1:-build}/bin
ROUNDS=${2:-2}
SRC=$(cd "$(dirname "$0")/.." && pwd)
T=$(mktemp -d "${TMPDIR:-/tmp}/pmamba-evalbench-XXXXXX")
trap 'rm -rf "$T"' EXIT
"$BIN/pmamba-train" --preset tiny --data selective-copy --steps 2 --ckpt-dir "$T/c" --quiet --threads 2 >/dev/null
measure() {  # prints "KB seconds"
  /usr/bin/time -f "%M %e" "$@" 2>&1 >/dev/null | tail -1
}
echo "samples batch peak_rss_MB seconds tokens_per_s"
for r in $(seq 1 "$ROUNDS"); do
  for n in 1000 10000 100000; do
    for b in 256 $n; do
      [ "$b" -gt 10000 ] && continue  # one batch of 100,000 samples: ~5 GB of activations
      read -r kb s < <(measure "$BIN/pmamba-eval" --ckpt "$T/c" --pp 1 --data selective-copy --samples $n --batch-size $b --threads 2)
      echo "$n $b $((kb / 1024)) $s $(python3 -c "print(round($n * 48 / $s))")" | tee -a "$T/rows"
    done
  done
done >/dev/null
python3 - "$T/rows" <<'PY'
import statistics, sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    n, b, mb, s, tps = line.split()
    rows[(int(n), int(b))].append((int(mb), float(s), int(tps)))
print("samples  batch  peak RSS (MB)  seconds  tokens/s   (median of %d, 2 threads, tiny, L 48)" % len(next(iter(rows.values()))))
for (n, b), v in sorted(rows.items()):
    print("%7d  %5d  %13d  %7.2f  %8d" % (n, b, statistics.median(x[0] for x in v), statistics.median(x[1] for x in v),
                                            statistics.median(x[2] for x in v)))
PY
printf '{"d_model": 64, "n_layer": 4, "vocab_size": 256, "d_state": 8}' > "$T/m.json"
train=(--config "$T/m.json" --data "$SRC/tests/fixtures/data/tok" --eval-fraction 0.1 --seq-len 64 --steps 20
       --microbatches 4 --microbatch-size 4 --threads 2 --quiet)
for r in $(seq 1 "$ROUNDS"); do
  for e in 0 5; do
    s=$( { /usr/bin/time -f "%e" "$BIN/pmamba-train" "${train[@]}" --eval-every $e --eval-samples 8 >/dev/null; } 2>&1 | tail -1)
    echo "$e $s" >> "$T/train"
  done
done
python3 - "$T/train" <<'PY'
import statistics, sys, collections
t = collections.defaultdict(list)
for line in open(sys.argv[1]):
    e, s = line.split()
    t[int(e)].append(float(s))
a, b = statistics.median(t[0]), statistics.median(t[5])
print("training 20 steps: %.2f s without validation, %.2f s with --eval-every 5 --eval-samples 8 (x%.3f)" % (a, b, b / a))
PY
