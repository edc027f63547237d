#!/usr/bin/env bash
# Runs every benchmark behind bench/RESULTS.md and prints their JSON lines (progress on stderr).
# Scratch files go to BENCH_DIR (default: the build directory), which should be on the disk
# under test. Takes ~35 minutes on 2 cores. PMAMBA_HF_PYTHON (a Python with transformers) adds
# transformers' generate() to the generation benchmark and transformers' training (with mambapy)
# to the training benchmark.
set -euo pipefail
BUILD=${1:-build}
BIN=$BUILD/bin
DIR=${BENCH_DIR:-$BUILD/bench-scratch}
mkdir -p "$DIR"
"$BIN/pmamba-bench" scan --json
"$BIN/pmamba-ssd-bench"
"$BIN/pmamba-bench" ckpt --dir "$DIR/ckpt" --repeats 7
"$BIN/pmamba-bench" reshard --dir "$DIR/reshard" --repeats 3
bench/pp_bench.sh "$BUILD" 12 | tail -1
bench/dp_bench.sh "$BUILD" 12 | tail -1
bench/hybrid_bench.sh "$BUILD" 10 2 | tail -1
python3 bench/convert_bench.py "$BUILD" --rounds 3 --dir "$DIR/convert"
python3 bench/generate_bench.py "$BUILD" --rounds 3 --threads 2
bench/eval_bench.sh "$BUILD" 2
bench/async_ckpt_bench.sh "$BUILD" 20 5 3 small 2 | tail -1
bench/train_bench.sh "$BUILD" --threads 2
rm -rf "$DIR"
