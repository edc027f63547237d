#!/usr/bin/env bash
# `torchrun --no-python … pmamba-train` works: under torchrun's static rendezvous the agent
# already hosts the TCPStore on MASTER_PORT, so the stages must join it as clients. The run
# must equal the local launcher's. Skips (77) when torchrun is not installed.
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"
command -v torchrun >/dev/null || { echo "SKIPPED: torchrun not installed (Debian: python3-torch)"; exit 77; }
# torchrun's agent store and pmamba's LibTorch must be the same torch (TCPStore's protocol
# changes between versions: a 2.x client cannot use 1.13's store).
py=$(head -1 "$(command -v torchrun)" | sed 's/^#! *//')
theirs=$($py -c 'import torch; print(".".join(torch.__version__.split(".")[:2]))' 2>/dev/null)
ours=$("$BIN/pmamba-train" --version | sed -n 's/.*LibTorch \([0-9]*\.[0-9]*\).*/\1/p')
[ -n "$ours" ] || { echo "FAIL: pmamba-train --version names no LibTorch version"; exit 1; }
if [ "$theirs" != "$ours" ]; then
  echo "SKIPPED: torchrun runs torch ${theirs:-?}, pmamba-train is built on LibTorch $ours"; exit 77
fi
common=(--preset tiny --data selective-copy --copy-tokens 4 --copy-slots 12 --microbatches 4 --microbatch-size 2
        --seed 5 --steps 4 --ckpt-every 2 --threads 1 --timeout 30 --quiet)
port=$(free_port)
# --redirects/--tee/--log_dir: Debian's torchrun 1.13 on Python 3.11 crashes with its default
# redirects ("0"), which Python 3.11's Flag enum no longer lists; 2 sends stderr to a file and
# tees it to the console.
run timeout 180 torchrun --redirects 2 --tee 2 --log_dir "$T/logs" --master_port "$port" --no_python \
    --nproc_per_node 3 "$BIN/pmamba-train" "${common[@]}" --pp 3 --ckpt-dir "$T/tr"
expect_code 0
run "$BIN/pmamba-train" "${common[@]}" --pp 3 --ckpt-dir "$T/local"; expect_code 0
# Under a torchrun of one process, --pp 3 starts its own stages, which meet at their own store.
run timeout 180 torchrun --redirects 2 --tee 2 --log_dir "$T/logs1" --master_port "$port" --no_python \
    --nproc_per_node 1 "$BIN/pmamba-train" "${common[@]}" --pp 3 --ckpt-dir "$T/one"
expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/one" "$T/local"; expect_code 0
run "$BIN/pmamba-ckpt" diff "$T/tr" "$T/local"; expect_code 0; expect_out "EQUAL"
run "$BIN/pmamba-ckpt" verify "$T/tr"; expect_code 0
finish
