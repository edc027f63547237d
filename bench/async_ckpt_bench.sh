#!/usr/bin/env bash
# Asynchronous checkpoint benchmark: the stall an --async-ckpt checkpoint leaves in training, as a
# fraction of the synchronous save time (issue 16): the same training run three ways, side by
# side in rotating order, REPEATS times: no checkpoints, synchronous checkpoints, --async-ckpt.
#   stall = (T_async - T_none) / (T_sync - T_none)
# T is the wall time from the end of step 1 to the end of step STEPS-1, from the metrics'
# timestamps: it holds every checkpoint step but the last (the last step's save is synchronous
# in both modes, since the run must wait for it) and every step that overlapped a background
# write, so steps that slow down while the write runs count. The script checks that each async
# save committed before step STEPS-1 (else the window would hide part of it). Whole-process times
# are printed too. One JSON line on stdout at the end, progress on stderr.
# Usage: bench/async_ckpt_bench.sh BUILD_DIR [STEPS [EVERY [REPEATS [PRESET [THREADS [COMPRESSION]]]]]]
# (COMPRESSION: pmamba-train's --compression, default its own default)
set -euo pipefail
BUILD=${1:-build}
BIN=$BUILD/bin
STEPS=${2:-40}
EVERY=${3:-10}
REPEATS=${4:-3}
PRESET=${5:-small}
THREADS=${6:-2}
COMPRESSION=${7:-}
# Checkpoints go to the disk under test (BENCH_DIR, default the build directory), not tmpfs.
DIR=${BENCH_DIR:-$BUILD/bench-scratch}
mkdir -p "$DIR"
T=$(mktemp -d "$DIR/async-ckpt-XXXXXX")
trap 'rm -rf "$T"' EXIT
common=(--preset "$PRESET" --data selective-copy --steps "$STEPS" --seed 1 --threads "$THREADS" --quiet)
[ -n "$COMPRESSION" ] && common+=(--compression "$COMPRESSION")
one() {  # mode, repeat
  local mode=$1 r=$2 extra=()
  case $mode in
    none) extra=() ;;
    sync) extra=(--ckpt-dir "$T/$mode-$r" --ckpt-every "$EVERY") ;;
    async) extra=(--ckpt-dir "$T/$mode-$r" --ckpt-every "$EVERY" --async-ckpt) ;;
  esac
  local t0 t1
  t0=$(date +%s.%N)
  "$BIN/pmamba-train" "${common[@]}" "${extra[@]}" --metrics "$T/$mode-$r.jsonl" >/dev/null 2>"$T/$mode-$r.err" ||
      { cat "$T/$mode-$r.err" >&2; exit 1; }
  t1=$(date +%s.%N)
  echo "$t0 $t1" >"$T/$mode-$r.wall"
  rm -rf "$T/$mode-$r"  # one run's checkpoints at a time on the disk
}
modes=(none sync async)
for r in $(seq 1 "$REPEATS"); do
  for k in 0 1 2; do  # rotate the order: none sync async, sync async none, async none sync
    mode=${modes[$(( (r - 1 + k) % 3 ))]}
    echo "repeat $r: $mode" >&2
    one "$mode" "$r"
  done
done
python3 - "$T" "$STEPS" "$EVERY" "$REPEATS" "$PRESET" "$THREADS" "${COMPRESSION:-default}" <<'PY'
import datetime, json, os, statistics, sys
d, steps, every, repeats, preset, threads, compression = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5], int(sys.argv[6]), sys.argv[7]
def stamp(j):
    return datetime.datetime.fromisoformat(j["time"].replace("Z", "+00:00")).timestamp()
res = {m: [] for m in ("none", "sync", "async")}
saves, save_cpus, snaps, commits, writes, works = [], [], [], [], [], []
for m in res:
    for r in range(1, repeats + 1):
        rows = {j["step"]: j for j in map(json.loads, open(os.path.join(d, f"{m}-{r}.jsonl"))) if "loss" in j}
        t0, t1 = map(float, open(os.path.join(d, f"{m}-{r}.wall")).read().split())
        res[m].append({"window": stamp(rows[steps - 1]) - stamp(rows[1]), "process": t1 - t0})
        inner = [k for k in range(every, steps, every)]
        if m == "sync":
            saves += [rows[k]["ckpt_time_s"] for k in inner]
            save_cpus += [rows[k]["ckpt_cpu_s"] for k in inner if "ckpt_cpu_s" in rows[k]]
        if m == "async":
            snaps += [rows[k]["ckpt_snapshot_s"] for k in inner]
            done = {j["ckpt_committed"]: s for s, j in rows.items() if "ckpt_committed" in j}
            late = [k for k in inner if done.get(k, steps) > steps - 1]
            if late:
                print(f"warning: async saves of steps {late} committed after step {steps - 1}", file=sys.stderr)
            commits += [rows[done[k]]["ckpt_commit_s"] for k in inner if k in done]
            writes += [rows[done[k]]["ckpt_write_s"] for k in inner if k in done]
            works += [rows[done[k]]["ckpt_commit_work_s"] for k in inner if k in done and "ckpt_commit_work_s" in rows[done[k]]]
            res[m][-1]["commit_lag_steps"] = [done.get(k, steps) - k for k in inner]
# In-run estimate, robust to load that changes between runs (a shared machine): what the async
# run paid over its own median step (steps that overlapped a write, snapshot, commit wait) against
# the sync run's own save times.
paired_async, paired_sync = [], []
for r in range(1, repeats + 1):
    rows = {j["step"]: j for j in map(json.loads, open(os.path.join(d, f"async-{r}.jsonl"))) if "loss" in j}
    inner = list(range(every, steps, every))
    done = {j["ckpt_committed"]: s for s, j in rows.items() if "ckpt_committed" in j}
    over = set()
    for k in inner:
        over |= set(range(k + 1, done.get(k, steps) + 1))
    base = statistics.median(j["step_time_s"] for s, j in rows.items() if s not in over and 1 < s < steps)
    paired_async.append(sum(rows[s]["step_time_s"] - base for s in over if s < steps) +
                        sum(rows[k]["ckpt_snapshot_s"] for k in inner) +
                        sum(rows[done[k]]["ckpt_commit_s"] for k in inner if k in done))
    srows = {j["step"]: j for j in map(json.loads, open(os.path.join(d, f"sync-{r}.jsonl"))) if "loss" in j}
    paired_sync.append(sum(srows[k]["ckpt_time_s"] for k in inner))
med = {m: statistics.median(x["window"] for x in v) for m, v in res.items()}
proc = {m: statistics.median(x["process"] for x in v) for m, v in res.items()}
n_inner = len(range(every, steps, every))
out = {
    "bench": "async_ckpt", "preset": preset, "threads": threads, "compression": compression, "steps": steps, "ckpt_every": every,
    "repeats": repeats, "checkpoints_in_window": n_inner,
    "window_s": med, "process_s": proc,
    "sync_save_s_median": statistics.median(saves),
    "sync_save_cpu_s_median": statistics.median(save_cpus) if save_cpus else None,  # CPU the save used
    "async_snapshot_s_median": statistics.median(snaps),
    "async_commit_wait_s_median": statistics.median(commits) if commits else None,
    "async_write_s_median": statistics.median(writes) if writes else None,
    "async_commit_work_s_median": statistics.median(works) if works else None,  # the background commit
    "commit_lag_steps": [x.get("commit_lag_steps") for x in res["async"]],
    "sync_stall_s": med["sync"] - med["none"],
    "async_stall_s": med["async"] - med["none"],
    "stall_fraction": (med["async"] - med["none"]) / (med["sync"] - med["none"]),
    "paired_async_stall_s": statistics.median(paired_async),
    "paired_sync_save_s": statistics.median(paired_sync),
    "paired_stall_fraction": statistics.median(paired_async) / statistics.median(paired_sync),
}
print(f"{preset}, {threads} threads, {steps} steps, a checkpoint every {every} ({n_inner} in the window), "
      f"{repeats} repeats, medians:", file=sys.stderr)
for m in res:
    runs = ", ".join("%.2f" % x["window"] for x in res[m])
    print(f"  {m:5}: window {med[m]:7.2f} s  (runs {runs})  process {proc[m]:7.2f} s", file=sys.stderr)
print(f"  sync save {out['sync_save_s_median']:.3f} s each ({out['sync_save_cpu_s_median']} s CPU); async snapshot {out['async_snapshot_s_median']:.3f} s, "
      f"commit wait {out['async_commit_wait_s_median']}, background write {out['async_write_s_median']}", file=sys.stderr)
print(f"  stall fraction (T_async - T_none) / (T_sync - T_none) = {out['stall_fraction']:.3f}", file=sys.stderr)
print(f"  in-run estimate: async pays {out['paired_async_stall_s']:.2f} s, sync saves take {out['paired_sync_save_s']:.2f} s: "
      f"{out['paired_stall_fraction']:.3f}", file=sys.stderr)
print(json.dumps(out))
PY
