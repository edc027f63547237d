#!/usr/bin/env python3
"""pmamba-convert throughput and peak memory against `cp` of the same bytes.

For each model size (random weights from `pmamba-ckpt init --compression none`), each round runs,
back to back on the same files: export (checkpoint -> transformers safetensors folder), `cp` of
the exported safetensors files followed by an fsync of each copy (the converter fsyncs what it
writes), and import (the folder -> a checkpoint, uncompressed and zstd:1). Wall times and each
process's peak RSS (wait4's ru_maxrss) are measured; medians over rounds are reported as
throughput (tensor bytes / s) and as ratios to cp. The sources are in the page cache for every
command alike (they were just written or read).

Usage: bench/convert_bench.py BUILD_DIR [--models mamba-130m,mamba-1.4b] [--rounds 3] [--dir DIR]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time


def timed(cmd):
    """(wall seconds, peak RSS bytes) of one command; its output is discarded, failure raises."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode()
    p.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {err}")
    return wall, usage.ru_maxrss * 1024


def tensor_sizes(folder):
    """Byte sizes of every tensor in a folder's safetensors files (from their headers)."""
    sizes = []
    for f in os.listdir(folder):
        if f.endswith(".safetensors"):
            with open(os.path.join(folder, f), "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
            sizes += [v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"]
    return sizes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--models", default="mamba-130m,mamba-1.4b")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    bin_dir = os.path.join(a.build, "bin")
    work = a.dir or os.path.join(a.build, "bench-scratch", "convert")
    res = {"bench": "convert", "rounds": a.rounds, "cores": os.cpu_count(), "models": []}
    print(f"{'model':>11} {'what':>14} {'GB/s':>6} {'x cp':>6} {'peak RSS MB':>12} {'largest tensor MB':>18}", file=sys.stderr)
    for model in a.models.split(","):
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        src = os.path.join(work, "src")
        subprocess.run([os.path.join(bin_dir, "pmamba-ckpt"), "init", src, "--preset", model, "--seed", "1",
                        "--compression", "none"], check=True, stdout=subprocess.DEVNULL)
        runs = {k: [] for k in ("export", "cp", "import", "import_zstd1")}
        rss = {k: [] for k in runs}
        nbytes = big = 0
        for r in range(a.rounds):
            hf, cpd, c1, c2 = (os.path.join(work, n) for n in ("hf", "cp", "c1", "c2"))
            for d in (hf, cpd, c1, c2):
                shutil.rmtree(d, ignore_errors=True)
            w, m = timed([os.path.join(bin_dir, "pmamba-convert"), "export", src, hf, "--quiet"])
            runs["export"].append(w), rss["export"].append(m)
            nbytes, big = sum(tensor_sizes(hf)), max(tensor_sizes(hf))
            os.makedirs(cpd)
            files = [os.path.join(hf, f) for f in sorted(os.listdir(hf)) if f.endswith(".safetensors")]
            w, m = timed(["bash", "-c", 'cp "$@" "$0" && sync "$0"/*', cpd] + files)
            runs["cp"].append(w), rss["cp"].append(m)
            w, m = timed([os.path.join(bin_dir, "pmamba-convert"), "import", hf, c1, "--compression", "none", "--quiet"])
            runs["import"].append(w), rss["import"].append(m)
            w, m = timed([os.path.join(bin_dir, "pmamba-convert"), "import", hf, c2, "--compression", "zstd:1",
                          "--threads", "2", "--quiet"])
            runs["import_zstd1"].append(w), rss["import_zstd1"].append(m)
        med = {k: statistics.median(v) for k, v in runs.items()}
        row = {"model": model, "tensor_bytes": nbytes, "largest_tensor_bytes": big}
        for k in runs:
            row[k] = {"seconds": med[k], "gb_per_s": nbytes / med[k] / 1e9, "over_cp": med["cp"] / med[k],
                      "peak_rss_bytes": max(rss[k])}
            print(f"{model:>11} {k:>14} {nbytes / med[k] / 1e9:>6.2f} {med['cp'] / med[k]:>6.2f} "
                  f"{max(rss[k]) / 1e6:>12.0f} {big / 1e6:>18.0f}", file=sys.stderr)
        res["models"].append(row)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
