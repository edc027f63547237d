#!/usr/bin/env bash
# Data-parallel benchmark (bench/RESULTS.md, "Data parallelism"):
#  1. training tokens/s at (PP, DP) = (1,1), (1,2), (2,1) with a compute-bound model (d_model 128,
#     microbatch 16 x 48 tokens, M = 8), 1 thread per rank, on 2 cores; two rounds in rotating order;
#  2. the gradient reduction of a mamba-130m-sized model between 2 ranks (PP 1 x DP 2, M = 2):
#     --grad-reduce tree against the backend's all-reduce (reduce_time_s, median of steps 2..);
#  3. bytes sent per step per rank;
#  4. peak RSS per rank with and without ZeRO-1 against the theory (16 bytes per parameter, or
#     8 + 8/D), mamba-130m at PP 1 x DP 2, ranks launched by hand so each has its own RSS;
#  5. checkpoint save time (uncompressed) with 1 writer per stage (DP 1) and 2 (DP 2).
# Usage: bench/dp_bench.sh BUILD_DIR [STEPS]
set -euo pipefail
BIN=${1:-build}/bin
STEPS=${2:-12}
T=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/pmamba-dpbench-XXXXXX")
trap 'rm -rf "$T"' EXIT
cat > "$T/wide.json" << 'JSON'
{"d_model": 128, "n_layer": 4, "vocab_size": 64, "d_state": 16, "tie_embeddings": true}
JSON
wide=(--config "$T/wide.json" --data selective-copy --microbatch-size 16 --microbatches 8 --seed 1 --threads 1 --quiet)
for round in 1 2; do
  if [ $round -eq 1 ]; then order="1,1 1,2 2,1"; else order="2,1 1,2 1,1"; fi
  for l in $order; do
    "$BIN/pmamba-train" "${wide[@]}" --steps "$STEPS" --pp "${l%,*}" --dp "${l#*,}" \
      --metrics "$T/wide-$l-$round.jsonl" >/dev/null
  done
done
big=(--preset mamba-130m --data selective-copy --microbatch-size 1 --microbatches 2 --seed 1 --threads 1 --quiet)
for mode in tree allreduce tree allreduce; do
  "$BIN/pmamba-train" "${big[@]}" --steps 4 --pp 1 --dp 2 --grad-reduce $mode --metrics "$T/red-$mode.jsonl" >/dev/null
  cat "$T/red-$mode.jsonl" >> "$T/red-$mode-all.jsonl"
done
# Peak RSS of each rank (GNU time), ranks started by hand with torchrun's variables.
rss() {  # name, extra args...
  local name=$1; shift
  local port; port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  for r in 0 1; do
    RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port /usr/bin/time -f "%M" -o "$T/$name.rss$r" \
      "$BIN/pmamba-train" "${big[@]}" --steps 2 --pp 1 --dp 2 "$@" >/dev/null 2>"$T/$name.err$r" &
  done
  wait
}
rss zero0 --zero 0
rss zero1 --zero 1
for dp in 1 2; do
  "$BIN/pmamba-train" "${big[@]}" --steps 3 --pp 1 --dp $dp --ckpt-every 1 --compression none --ckpt-dir "$T/ck$dp" \
    --metrics "$T/ck$dp.jsonl" >/dev/null
  rm -rf "$T/ck$dp"
done
python3 - "$T" "$STEPS" << 'PY'
import json, os, statistics as st, sys
d, steps = sys.argv[1], int(sys.argv[2])
def rows(f, skip):
    return [j for j in map(json.loads, open(os.path.join(d, f))) if "loss" in j][skip:]
out = {"bench": "dp", "steps": steps, "threads_per_rank": 1, "cores": os.cpu_count()}
print("tokens/s, wide model (d_model 128), M 8 x 16 x 48 tokens, median of steps 3.. over 2 rounds:")
tok = {}
for l in ("1,1", "1,2", "2,1"):
    r = rows(f"wide-{l}-1.jsonl", 2) + rows(f"wide-{l}-2.jsonl", 2)
    tok[l] = st.median(x["tokens_per_s"] for x in r)
    b = st.median(x["bytes_sent"] for x in r) / (int(l[0]) * int(l[2]))
    print(f"  (pp, dp) = ({l}): {tok[l]:8.0f} tokens/s  ({tok[l] / tok['1,1']:.2f}x of (1,1)), {b:,.0f} bytes sent per rank per step")
    out[f"tokens_per_s_{l}"] = tok[l]
    out[f"bytes_per_rank_{l}"] = b
print("gradient reduction, mamba-130m, PP 1 x DP 2 (rank 0's reduce_time_s, median of steps 2..):")
for mode in ("tree", "allreduce"):
    r = [j for j in rows(f"red-{mode}-all.jsonl", 0) if j["step"] >= 2]
    out[f"reduce_s_{mode}"] = st.median(x["reduce_time_s"] for x in r)
    out[f"bytes_per_rank_{mode}"] = st.median(x["bytes_sent"] for x in r) / 2
    print(f"  {mode:9}: {out[f'reduce_s_{mode}']:.3f} s, {out[f'bytes_per_rank_{mode}']:,.0f} bytes sent per rank per step")
print(f"  tree / allreduce = {out['reduce_s_tree'] / out['reduce_s_allreduce']:.2f}x")
n = 129135360  # mamba-130m parameters (tie counted once)
for z in (0, 1):
    kib = [int(open(os.path.join(d, f"zero{z}.rss{r}")).read().split()[-1]) for r in (0, 1)]
    out[f"rss_bytes_zero{z}"] = [k * 1024 for k in kib]
    print(f"  ZeRO-{z}: peak RSS per rank {[f'{k / 2**20:.2f} GiB' for k in kib]}")
theory = 16 * n - (8 * n + 8 * n / 2)
meas = st.mean(out["rss_bytes_zero0"]) - st.mean(out["rss_bytes_zero1"])
out["zero1_saving_bytes"] = meas
out["zero1_saving_theory_bytes"] = theory
print(f"  ZeRO-1 saves {meas / 2**20:.0f} MiB per rank; theory 16 - (8 + 8/2) = 4 bytes x {n:,} = {theory / 2**20:.0f} MiB")
for dp in (1, 2):
    r = [j for j in rows(f"ck{dp}.jsonl", 0) if "ckpt_time_s" in j]
    out[f"ckpt_s_dp{dp}"] = st.median(x["ckpt_time_s"] for x in r)
    print(f"  checkpoint save (none), {dp} writer(s) per stage: {out[f'ckpt_s_dp{dp}']:.3f} s (median of {len(r)})")
print(json.dumps(out))
PY
