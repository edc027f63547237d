#!/usr/bin/env bash
# Runs the benchmarks that exist so far and prints their results (see bench/RESULTS.md).
set -euo pipefail
echo "no benchmarks yet"
