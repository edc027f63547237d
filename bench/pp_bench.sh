#!/usr/bin/env bash
# Pipeline benchmark: training tokens/s of a small Mamba on the CPU at PP 1, 2, 4 for GPipe and
# 1F1B with m = 1, 4, 8 microbatches; measured bubble (fraction of the pipeline phase the stages wait for
# a peer) next to the theoretical (p-1)/(m+p-1); bytes sent per step, packed vs summed; time
# spent saving a checkpoint as a fraction of the step time. One stage per process, 1 thread
# each. A second table repeats PP 1 and 2 with a 4x wider model whose microbatch is ~50 ms of
# compute, so that the schedule, not process scheduling, decides the bubble; there the measured
# bubble is also set against a per-stage model of it (see bench/RESULTS.md).
# Usage: bench/pp_bench.sh BUILD_DIR [STEPS]
set -euo pipefail
BIN=${1:-build}/bin
STEPS=${2:-12}
T=$(mktemp -d "${TMPDIR:-/tmp}/pmamba-ppbench-XXXXXX")
trap 'rm -rf "$T"' EXIT
base=(--data selective-copy --steps "$STEPS" --seed 1 --threads 1 --quiet)
common=(--preset tiny --microbatch-size 4 "${base[@]}")
run() {  # name, extra args...
  local name=$1; shift
  "$BIN/pmamba-train" "${common[@]}" "$@" --metrics "$T/$name.jsonl" >/dev/null 2>"$T/$name.err" || {
    cat "$T/$name.err" >&2; exit 1; }
}
for pp in 1 2 4; do
  for sched in gpipe 1f1b; do
    for m in 1 4 8; do run "pp$pp-$sched-m$m" --pp $pp --schedule $sched --microbatches $m; done
  done
done
# The wider model: 2 processes on 2 cores, so nothing is oversubscribed.
cat > "$T/wide.json" << 'JSON'
{"d_model": 128, "n_layer": 4, "vocab_size": 64, "d_state": 16, "tie_embeddings": true}
JSON
wide=(--config "$T/wide.json" --microbatch-size 16)
for pp in 1 2; do
  for sched in gpipe 1f1b; do
    for m in 1 4 8; do
      "$BIN/pmamba-train" "${base[@]}" "${wide[@]}" --pp $pp --schedule $sched --microbatches $m \
        --metrics "$T/wide-pp$pp-$sched-m$m.jsonl" >/dev/null 2>"$T/wide.err" || { cat "$T/wide.err" >&2; exit 1; }
    done
  done
done
for b in packed summed; do run "bytes-$b" --pp 2 --schedule 1f1b --microbatches 4 --boundary $b; done
run ckpt --pp 2 --schedule 1f1b --microbatches 4 --ckpt-dir "$T/ck" --ckpt-every 2 --compression none
python3 - "$T" "$STEPS" << 'PY'
import json, os, statistics, sys
d, steps = sys.argv[1], int(sys.argv[2])
def rows(name):
    r = [j for j in map(json.loads, open(os.path.join(d, name + ".jsonl"))) if "loss" in j]
    return r[2:]  # the first two steps warm up
def stage_model(p, m, b_over_f=2.0):
    # Per-stage average of the time each stage waits in the pipeline phase, uniform stages,
    # backward = b_over_f x forward: the phase lasts T = (m+p-1)(f+b) on stage 0 and ends i*b
    # earlier on stage i; each stage is busy m(f+b) of it.
    f, b = 1.0, b_over_f
    T = (m + p - 1) * (f + b)
    return sum(1 - m * (f + b) / (T - i * b) for i in range(p)) / p
def table(prefix, degrees):
    print(f"{'pp':>3} {'schedule':>8} {'m':>3} {'tokens/s':>9} {'bubble':>7} {'theory':>7} {'model':>7}")
    runs = []
    for pp in degrees:
        for sched in ("gpipe", "1f1b"):
            for m in (1, 4, 8):
                r = rows(f"{prefix}pp{pp}-{sched}-m{m}")
                run = {"pp": pp, "schedule": sched, "microbatches": m,
                       "tokens_per_s": statistics.median(x["tokens_per_s"] for x in r),
                       "bubble_measured": statistics.median(x["bubble"] for x in r),
                       "bubble_theory": (pp - 1) / (m + pp - 1), "bubble_stage_model": stage_model(pp, m)}
                runs.append(run)
                print(f"{pp:>3} {sched:>8} {m:>3} {run['tokens_per_s']:>9.0f} {run['bubble_measured']:>7.2f} "
                      f"{run['bubble_theory']:>7.2f} {run['bubble_stage_model']:>7.2f}")
    return runs
out = {"bench": "pp", "steps": steps, "threads_per_stage": 1, "cores": os.cpu_count()}
out["runs"] = table("", (1, 2, 4))
print("wider model (d_model 128, microbatch 16 x 48 tokens):")
out["wide_runs"] = table("wide-", (1, 2))
def live(sched, p, m, s):
    # Microbatches whose activations a stage holds at once (the schedule checker's count).
    return m if sched == "gpipe" else min(m, p - s)
print("activation high-water mark per stage (MB, median over steps; live microbatches in brackets):")
out["act_peak"] = []
for prefix, pp in (("", 4), ("wide-", 2)):
    for sched in ("gpipe", "1f1b"):
        r = rows(f"{prefix}pp{pp}-{sched}-m8")
        peaks = [statistics.median(x["act_peak_bytes"][s] for x in r) for s in range(pp)]
        counts = [live(sched, pp, 8, s) for s in range(pp)]
        out["act_peak"].append({"model": prefix or "tiny-", "pp": pp, "schedule": sched, "microbatches": 8,
                                "peak_bytes": peaks, "live_microbatches": counts})
        cells = "  ".join(f"{b / 1e6:6.2f} [{c}]" for b, c in zip(peaks, counts))
        print(f"  {(prefix or 'tiny-')[:-1]:>5} PP {pp} {sched:>5} m 8: {cells}")
for b in ("packed", "summed"):
    out[f"bytes_sent_{b}"] = statistics.median(x["bytes_sent"] for x in rows(f"bytes-{b}"))
print(f"bytes sent per step at PP 2, m 4: packed {out['bytes_sent_packed']:.0f}, summed {out['bytes_sent_summed']:.0f}")
ck = [x for x in rows("ckpt") if "ckpt_time_s" in x]
plain = [x["step_time_s"] for x in rows("ckpt") if "ckpt_time_s" not in x]
out["ckpt_time_s"] = statistics.median(x["ckpt_time_s"] for x in ck)
out["step_time_s"] = statistics.median(plain)
out["ckpt_fraction_of_step"] = out["ckpt_time_s"] / out["step_time_s"]
print(f"checkpoint (PP 2, uncompressed): {out['ckpt_time_s']*1e3:.1f} ms = {out['ckpt_fraction_of_step']:.2f} x a step of {out['step_time_s']*1e3:.1f} ms")
print(json.dumps(out))
PY
