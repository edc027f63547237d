#!/usr/bin/env bash
# Whole-model training throughput of the Mamba-2 family on the CPU: tiny-hybrid (Mamba-2 +
# attention + MLP) and small-mamba2 (~9.5M parameters, 10 Mamba-2 layers) at PP 1 (one process,
# 2 threads) and PP 2 (two processes, 1 thread each: the same 2 cores), 1F1B. Runs alternate
# PP 1 / PP 2 (ROUNDS rounds) so both see the same machine; medians over steps and rounds, the
# first two steps of every run dropped (warm-up).   Usage: bench/hybrid_bench.sh BUILD_DIR [STEPS] [ROUNDS]
set -euo pipefail
BIN=${1:-build}/bin
STEPS=${2:-10}
ROUNDS=${3:-2}
T=$(mktemp -d "${TMPDIR:-/tmp}/pmamba-hybench-XXXXXX")
trap 'rm -rf "$T"' EXIT
base=(--data induction --steps "$STEPS" --seed 1 --schedule 1f1b --quiet)
declare -A shape=([tiny-hybrid]="--microbatches 8 --microbatch-size 8 --seq-len 64"
                  [small-mamba2]="--microbatches 4 --microbatch-size 2 --seq-len 256")
for r in $(seq 1 "$ROUNDS"); do
  for preset in tiny-hybrid small-mamba2; do
    # shellcheck disable=SC2086
    "$BIN/pmamba-train" --preset $preset "${base[@]}" ${shape[$preset]} --pp 1 --threads 2 \
      --metrics "$T/$preset-pp1-$r.jsonl" >/dev/null 2>"$T/err" || { cat "$T/err" >&2; exit 1; }
    # shellcheck disable=SC2086
    "$BIN/pmamba-train" --preset $preset "${base[@]}" ${shape[$preset]} --pp 2 --threads 1 \
      --metrics "$T/$preset-pp2-$r.jsonl" >/dev/null 2>"$T/err" || { cat "$T/err" >&2; exit 1; }
  done
done
python3 - "$T" "$ROUNDS" "$STEPS" << 'PY'
import json, os, statistics, sys
d, rounds, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def rows(name):
    out = []
    for r in range(1, rounds + 1):
        out += [j for j in map(json.loads, open(os.path.join(d, f"{name}-{r}.jsonl"))) if "loss" in j][2:]
    return out
res = {"bench": "hybrid", "steps": steps, "rounds": rounds, "cores": os.cpu_count(), "runs": []}
print(f"{'model':>13} {'pp':>3} {'threads':>7} {'tokens/s':>9} {'step ms':>8} {'bubble':>7}")
for preset in ("tiny-hybrid", "small-mamba2"):
    tps = {}
    for pp, threads in ((1, 2), (2, 1)):
        r = rows(f"{preset}-pp{pp}")
        run = {"model": preset, "pp": pp, "threads_per_stage": threads,
               "tokens_per_s": statistics.median(x["tokens_per_s"] for x in r),
               "step_time_s": statistics.median(x["step_time_s"] for x in r),
               "bubble": statistics.median(x["bubble"] for x in r) if pp > 1 else 0.0}
        tps[pp] = run["tokens_per_s"]
        res["runs"].append(run)
        print(f"{preset:>13} {pp:>3} {threads:>7} {run['tokens_per_s']:>9.0f} {run['step_time_s']*1e3:>8.1f} "
              f"{run['bubble']:>7.2f}")
    res[f"{preset}_pp2_over_pp1"] = tps[2] / tps[1]
    print(f"{preset:>13} PP 2 / PP 1 = {tps[2] / tps[1]:.2f}")
print(json.dumps(res))
PY
