#!/usr/bin/env bash
# Training throughput against the machine's matmul rate and against Hugging Face transformers.
# Side by side in one run, all on the same THREADS (default 2), fp32, PP 1, for two configs:
#   small: d_model 384, 12 layers, vocab 256, one microbatch of 4 x L 256 per step
#   130m:  mamba-130m shape (d_model 768, 24 layers, vocab 50280), 1 x L 512 per step (--big-batch)
# Measured:
#   (a) pmamba tokens/s: build/bin/pmamba-train --pp 1 --threads T on induction data, the median
#       of the metrics file's tokens_per_s over the steps after the first two (warm-up);
#   (b) transformers' MambaForCausalLM (bench/hf_train.py: same shape, tied, fp32, AdamW) with
#       use_mambapy=True (mamba.py's parallel scan), and, for small only, its default sequential
#       path at 4 x L 128 (--seq-len-seq; pmamba is measured at that length too for the ratio);
#       torch.set_num_threads(T), OMP_NUM_THREADS=T, OMP_WAIT_POLICY=passive (as pmamba-train
#       sets for itself; PMAMBA_HF_WAIT_POLICY overrides). PMAMBA_HF_PYTHON names the Python (default
#       python3); without transformers (or mambapy) the column is skipped, and says so;
#   (c) pmamba-bench sgemm: a 2048^3 float32 matmul through the same LibTorch/OpenBLAS on T
#       threads, and every Linear's forward and two backward products at the model's shapes
#       (M = tokens per step): the ideal matmul time of one step;
#   (d) "MFU for this machine" = 6 x parameters x tokens/s / the 2048^3 sgemm rate (the tie
#       counted once, scan FLOPs not counted), and pmamba / HF speed ratios;
#   (e) perf record of a pmamba-train run per config, its samples grouped by part of the step
#       (bench/perf_breakdown.py), next to the ideal matmul time from (c).
# Prints a table and one JSON line per config ({"bench":"train",...}). The VM is noisy: with
# --rounds R the contenders alternate R times and medians over rounds are reported.
#   Usage: bench/train_bench.sh BUILD_DIR [--threads T] [--configs small,130m] [--rounds R]
#          [--big-batch B] [--seq-len-seq L] [--no-perf] [--no-hf] [--perf-dir DIR]
set -euo pipefail
BUILD=${1:-build}
[ $# -gt 0 ] && shift
THREADS=2 CONFIGS=small,130m ROUNDS=1 BIG_BATCH=1 SEQ_L=128 PERF=1 HF=1 PERF_DIR=
while [ $# -gt 0 ]; do
  case $1 in
    --threads) THREADS=$2; shift 2 ;;
    --configs) CONFIGS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --big-batch) BIG_BATCH=$2; shift 2 ;;
    --seq-len-seq) SEQ_L=$2; shift 2 ;;
    --no-perf) PERF=0; shift ;;
    --no-hf) HF=0; shift ;;
    --perf-dir) PERF_DIR=$2; shift 2 ;;
    *) echo "train_bench.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
BIN=$BUILD/bin
SRC=$(cd "$(dirname "$0")/.." && pwd)
T=$(mktemp -d "${TMPDIR:-/tmp}/pmamba-trainbench-XXXXXX")
trap 'rm -rf "$T"' EXIT
RES=$T/results.jsonl
: > "$RES"
say() { echo "$*" >&2; }

# --- config table: name preset d_model layers vocab(model) task_vocab batch len pmamba_steps hf_steps
config_row() {
  case $1 in
    small) echo "small small 384 12 256 256 4 256 10 4" ;;
    130m) echo "130m mamba-130m 768 24 50280 50277 $BIG_BATCH 512 6 3" ;;
    *) echo "train_bench.sh: unknown config $1 (small, 130m)" >&2; exit 2 ;;
  esac
}

# --- Python for transformers
HF_PY=${PMAMBA_HF_PYTHON:-python3}
HF_OK=0 HF_MAMBAPY=0 HF_WHY=
if [ "$HF" = 0 ]; then
  HF_WHY="--no-hf"
elif ! "$HF_PY" -c "import torch, transformers" >/dev/null 2>&1; then
  HF_WHY="no transformers in $HF_PY (set PMAMBA_HF_PYTHON; pip install transformers==4.49.0 mambapy)"
else
  HF_OK=1
  if "$HF_PY" -c "import mambapy.pscan" >/dev/null 2>&1; then HF_MAMBAPY=1; else HF_WHY="no mambapy in $HF_PY"; fi
fi
[ "$HF_OK" = 1 ] || say "transformers: skipped: $HF_WHY"
[ "$HF_OK" = 1 ] && [ "$HF_MAMBAPY" = 0 ] && say "transformers use_mambapy=True: skipped: $HF_WHY"

# One pmamba-train run; appends {"kind":"pmamba",...} to RES. Args: config preset tv batch len steps
pmamba_args() {  # preset task_vocab batch len steps metrics
  echo --preset "$1" --data induction --task-vocab "$2" --seq-len "$4" --microbatches 1 --microbatch-size "$3" \
    --pp 1 --threads "$THREADS" --steps "$5" --seed 1 --metrics "$6" --quiet
}
run_pmamba() {
  local cfg=$1 preset=$2 tv=$3 b=$4 l=$5 steps=$6 m=$T/m-$1-$5-$RANDOM.jsonl
  say "pmamba-train $cfg: $b x $l, $steps steps, $THREADS threads"
  # shellcheck disable=SC2046
  "$BIN/pmamba-train" $(pmamba_args "$preset" "$tv" "$b" "$l" "$steps" "$m") >/dev/null
  python3 - "$m" "$cfg" "$b" "$l" >> "$RES" <<'PY'
import json, statistics, sys
rows = [json.loads(x) for x in open(sys.argv[1]) if x.strip()]
steps = [r for r in rows if "step" in r and "tokens_per_s" in r]
after = [r for r in steps if r["step"] > 2] or steps
tps = [r["tokens_per_s"] for r in after]
print(json.dumps({"kind": "pmamba", "config": sys.argv[2], "batch": int(sys.argv[3]), "len": int(sys.argv[4]),
                  "tokens_per_s": statistics.median(tps), "steps_tok_s": [round(x, 1) for x in tps],
                  "step_time_s": statistics.median(r["step_time_s"] for r in after)}))
PY
  say "  $(tail -1 "$RES")"
}
run_hf() {  # config path d_model layers vocab batch len steps
  local out
  say "transformers $2 $1: $6 x $7, $8 steps (+1 warm-up), $THREADS threads"
  # The wait policy pmamba-train sets for itself (PMAMBA_HF_WAIT_POLICY=active|passive overrides).
  if out=$(OMP_WAIT_POLICY=${PMAMBA_HF_WAIT_POLICY:-passive} OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS "$HF_PY" "$SRC/bench/hf_train.py" --d-model "$3" \
      --layers "$4" --vocab "$5" --batch "$6" --len "$7" --threads "$THREADS" --path "$2" --steps "$8" --warmup 1); then
    echo "$out" | tail -1 | python3 -c "
import json, sys
j = json.loads(sys.stdin.read()); j['kind'] = 'hf-' + j['path']; j['config'] = '$1'; print(json.dumps(j))" >> "$RES"
    say "  tokens/s $(tail -1 "$RES" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["tokens_per_s"], 1))')"
  else
    say "  transformers $2 failed (see above): column skipped"
  fi
}

# --- (c) sgemm at 2048^3 and at the model shapes
SG_MODELS=()
for c in ${CONFIGS//,/ }; do
  read -r name preset dm nl v tv b l ps hs < <(config_row "$c")
  SG_MODELS+=(--model "$preset:$((b * l))")
done
say "pmamba-bench sgemm, $THREADS threads"
cut -d' ' -f1-3 /proc/loadavg > "$T/load-start"
"$BIN/pmamba-bench" sgemm --threads "$THREADS" "${SG_MODELS[@]}" --json > "$T/sgemm.json"

# --- (a), (b): contenders alternate per round
for r in $(seq 1 "$ROUNDS"); do
  for c in ${CONFIGS//,/ }; do
    read -r name preset dm nl v tv b l ps hs < <(config_row "$c")
    run_pmamba "$name" "$preset" "$tv" "$b" "$l" "$ps"
    if [ "$HF_OK" = 1 ] && [ "$HF_MAMBAPY" = 1 ]; then run_hf "$name" mambapy "$dm" "$nl" "$v" "$b" "$l" "$hs"; fi
    if [ "$name" = small ]; then
      if [ "$SEQ_L" != "$l" ]; then run_pmamba "$name" "$preset" "$tv" "$b" "$SEQ_L" "$ps"; fi
      if [ "$HF_OK" = 1 ]; then run_hf "$name" seq "$dm" "$nl" "$v" "$b" "$SEQ_L" 2; fi
    fi
  done
done

# The 2048^3 rate again after the contenders (the VM's neighbours come and go): the MFU
# denominator is the faster of the two.
"$BIN/pmamba-bench" sgemm --threads "$THREADS" --json > "$T/sgemm-end.json"
cut -d' ' -f1-3 /proc/loadavg > "$T/load-end"

# --- (e) perf profile of one pmamba-train run per config
if [ "$PERF" = 1 ]; then
  if ! command -v perf >/dev/null 2>&1; then
    say "perf breakdown: skipped: no perf"
  else
    for c in ${CONFIGS//,/ }; do
      read -r name preset dm nl v tv b l ps hs < <(config_row "$c")
      say "perf record: pmamba-train $name ($ps steps)"
      # DWARF call chains: LibTorch has no frame pointers, and the optimizer's and the loss's
      # element-wise kernels are told apart from the model's only by their callers.
      # shellcheck disable=SC2046
      perf record -q -F 199 --call-graph dwarf,16384 -o "$T/perf-$name.data" -- \
        "$BIN/pmamba-train" $(pmamba_args "$preset" "$tv" "$b" "$l" "$ps" "$T/perf-$name.jsonl") >/dev/null 2>"$T/perf-$name.log" || {
        say "  perf record failed: $(tail -3 "$T/perf-$name.log")"; continue; }
      perf script -i "$T/perf-$name.data" -F comm,tid,period,ip,sym,dso 2>/dev/null |
        python3 "$SRC/bench/perf_breakdown.py" --script --config "$name" --json-out "$T/breakdown-$name.json" >&2
      if [ -n "$PERF_DIR" ]; then mkdir -p "$PERF_DIR"; cp "$T/perf-$name.data" "$T/breakdown-$name.json" "$PERF_DIR/"; fi
    done
  fi
fi

# --- (d) summary
python3 - "$T" "$THREADS" "$HF_WHY" "$SEQ_L" "$CONFIGS" <<'PY'
import glob, json, os, statistics, sys
T, threads, hf_why, seq_l, configs = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5].split(",")
res = [json.loads(x) for x in open(os.path.join(T, "results.jsonl")) if x.strip()]
sg = json.load(open(os.path.join(T, "sgemm.json")))
sg_end = json.load(open(os.path.join(T, "sgemm-end.json")))["sgemm_gflops"]
sg_start = sg["sgemm_gflops"]
sg["sgemm_gflops"] = max(sg_start, sg_end)
rate = sg["sgemm_gflops"] * 1e9
load = [open(os.path.join(T, n)).read().strip() for n in ("load-start", "load-end")]
models = {m["model"]: m for m in sg.get("models", [])}
preset = {"small": "small", "130m": "mamba-130m"}

def med(kind, cfg, length=None):
    v = [r["tokens_per_s"] for r in res if r["kind"] == kind and r["config"] == cfg and (length is None or r["len"] == length)]
    return statistics.median(v) if v else None

def p(*a):  # the table goes to stderr, the JSON lines to stdout
    print(*a, file=sys.stderr)

def f(x, nd=1):
    return "skipped" if x is None else f"{x:.{nd}f}"

p(f"\nTraining throughput, {threads} threads, fp32, PP 1 (medians; sgemm {sg['size']}^3 = {sg['sgemm_gflops']:.1f} GFLOP/s, "
  f"the faster of {sg_start:.1f} before and {sg_end:.1f} after the contenders; load average {load[0]} before, {load[1]} after)")
for cfg in configs:
    m = models[preset[cfg]]
    P = m["parameters"]
    pm = [r for r in res if r["kind"] == "pmamba" and r["config"] == cfg]
    b, L = pm[0]["batch"], max(r["len"] for r in pm)
    p_tps = med("pmamba", cfg, L)
    p_step = statistics.median(r["step_time_s"] for r in pm if r["len"] == L)
    hm = med("hf-mambapy", cfg)
    hs = med("hf-seq", cfg)
    p_seq = med("pmamba", cfg, seq_l) if cfg == "small" else None
    hf_params = next((r["parameters"] for r in res if r["kind"].startswith("hf") and r["config"] == cfg), None)
    mfu = lambda t: None if t is None else 6 * P * t / rate
    j = {"bench": "train", "config": cfg, "threads": threads, "batch": b, "len": L, "parameters": P,
         "hf_parameters": hf_params, "pmamba_tok_s": p_tps, "pmamba_step_s": p_step,
         "hf_mambapy_tok_s": hm, "sgemm_gflops": sg["sgemm_gflops"], "sgemm_gflops_before_after": [sg_start, sg_end],
         "loadavg_before_after": load,
         "shape_gflops": m["shape_gflops"], "ideal_matmul_s": m["ideal_matmul_s"],
         "ideal_matmul_s_at_square": m["ideal_matmul_s_at_square"],
         "mfu": mfu(p_tps), "mfu_at_shapes": None if p_tps is None else 6 * P * p_tps / (m["shape_gflops"] * 1e9),
         "hf_mambapy_mfu": mfu(hm), "ratio_mambapy": None if not hm else p_tps / hm}
    if cfg == "small":
        j.update({"seq_len": seq_l, "pmamba_tok_s_at_seq_len": p_seq, "hf_seq_tok_s": hs,
                  "ratio_seq": None if not hs or not p_seq else p_seq / hs})
    if hf_why:
        j["hf_skipped"] = hf_why
    bd = os.path.join(T, f"breakdown-{cfg}.json")
    bdj = json.load(open(bd)) if os.path.exists(bd) else None
    if bdj:
        j["breakdown"] = bdj["percent"]
    p(f"\n{cfg}: {P:,} parameters, {b} x {L} tokens per step, {threads} threads")
    p(f"  pmamba              {f(p_tps):>9} tok/s   step {p_step:.3f} s   MFU {f(j['mfu'], 3)}")
    p(f"  HF use_mambapy      {f(hm):>9} tok/s   MFU {f(j['hf_mambapy_mfu'], 3)}   pmamba/HF {f(j['ratio_mambapy'], 2)}")
    if cfg == "small":
        p(f"  at L {seq_l}: pmamba {f(p_seq):>9} tok/s   HF sequential {f(hs)} tok/s   pmamba/HF {f(j['ratio_seq'], 2)}")
    p(f"  matmuls: {m['matmul_gflop_per_step']:.2f} GFLOP per step; ideal {m['ideal_matmul_s']:.3f} s at the shapes' own rates "
          f"({m['shape_gflops']:.1f} GFLOP/s, {m['ideal_matmul_s'] / p_step:.2f} of the step), {m['ideal_matmul_s_at_square']:.3f} s at {sg['size']}^3's")
    if bdj:
        b_s = bdj["percent"]["sgemm"] / 100 * p_step
        p(f"  perf: sgemm {bdj['percent']['sgemm']:.1f}% of CPU time (~{b_s:.3f} s of the {p_step:.3f} s step) against the ideal "
          f"{m['ideal_matmul_s']:.3f} s; scan fwd {bdj['percent']['scan_fwd']:.1f}%, bwd {bdj['percent']['scan_bwd']:.1f}%, "
          f"waiting {bdj['percent']['wait']:.1f}%, allocator {bdj['percent']['allocator']:.1f}%")
    for r in m["linears"]:
        p(f"    {r['name']:<8} {r['in']:>5} -> {r['out']:<5} x{r['count']:<3} fwd {r['fwd_gflops']:6.1f}  dgrad {r['dgrad_gflops']:6.1f}  "
              f"wgrad {r['wgrad_gflops']:6.1f} GFLOP/s   {r['step_ms']:8.1f} ms per step")
    if hf_why:
        p(f"  transformers: skipped: {hf_why}")
    j["linears"] = {r["name"]: [round(r["fwd_gflops"], 1), round(r["dgrad_gflops"], 1), round(r["wgrad_gflops"], 1)] for r in m["linears"]}
    j["runs"] = [r for r in res if r["config"] == cfg]
    print(json.dumps(j), flush=True)
PY
