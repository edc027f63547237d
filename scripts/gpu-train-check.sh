#!/usr/bin/env bash
# Training checks on a GPU machine, with a full build (HDF5, zstd, CLI11, nlohmann-json and Gloo
# headers beside a CUDA LibTorch; scripts/gpu-check.sh builds one with PMAMBA_FULL=1). Prints
# what it measured; exits non-zero only when something fails outright or a check that must hold
# on any device (a bitwise or checkpoint equality) does not.
#   1. PP 1 on the GPU vs PP 1 on the CPU: per-step losses (max relative difference, reported).
#   2. PP 2 with both ranks on one GPU over Gloo vs PP 1 on that GPU: losses, grad norms and the
#      final checkpoint (pmamba-ckpt diff; reported, since GPU kernels need not be bitwise
#      reproducible across stage splits).
#   3. With two or more GPUs: PP 2 over NCCL vs PP 2 over Gloo (same kernels, same split: must
#      be bitwise equal), then resume that checkpoint at PP 3 on the CPU.
#   4. bf16 autocast on the GPU: runs, and its losses differ from float32's.
#   5. A GPU-written checkpoint verifies and evaluates on the CPU.
#   6. Data parallelism on the device: PP 1 x DP 2 (NCCL with two GPUs, else Gloo), ZeRO 0 and 1,
#      against PP 1 on the device (checkpoint diff reported; with NCCL the DP group's broadcasts
#      and the tree's point-to-point messages are NCCL's).
#   7. A hybrid (tiny-hybrid: Mamba-2 with the chunked torch-ops SSD on CUDA tensors, attention,
#      gated MLP) on the device vs the CPU (losses reported), and PP 2 on the device vs PP 1 there.
# Usage: scripts/gpu-train-check.sh BUILD_DIR    (DEVICE=cpu runs the same steps on the CPU,
# which tests the script itself on a machine without a GPU)
set -uo pipefail
BIN=${1:-build}/bin
DEV=${DEVICE:-cuda}
T=$(mktemp -d "${TMPDIR:-/tmp}/pmamba-gputrain-XXXXXX")
trap 'rm -rf "$T"' EXIT
FAILED=0
bad() { echo "FAIL: $*"; FAILED=1; }
common=(--preset tiny --data selective-copy --copy-tokens 4 --copy-slots 12 --microbatches 4 --microbatch-size 4
        --steps 20 --warmup 2 --seed 7 --compression none --quiet --timeout 120 --schedule 1f1b)
train() {  # name, args...: run pmamba-train, metrics in $T/name.jsonl, checkpoints in $T/name
  local name=$1; shift
  "$BIN/pmamba-train" "${common[@]}" "$@" --ckpt-dir "$T/$name" --metrics "$T/$name.jsonl" >"$T/$name.out" 2>&1 ||
    { bad "pmamba-train $name: $(tail -3 "$T/$name.out")"; return 1; }
}
compare() {  # a b: prints max relative loss difference and whether losses/grad norms are bitwise equal
  python3 - "$T/$1.jsonl" "$T/$2.jsonl" <<'PY'
import json, sys
a = [j for j in map(json.loads, open(sys.argv[1])) if "loss" in j]
b = [j for j in map(json.loads, open(sys.argv[2])) if "loss" in j]
assert len(a) == len(b), (len(a), len(b))
rel = max(abs(x["loss"] - y["loss"]) / abs(y["loss"]) for x, y in zip(a, b))
same = all(x["loss"] == y["loss"] and x["grad_norm"] == y["grad_norm"] for x, y in zip(a, b))
print(f"max rel loss diff {rel:.3g}, bitwise {'equal' if same else 'different'}, final loss {a[-1]['loss']:.4f} vs {b[-1]['loss']:.4f}")
PY
}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader
NGPU=$( [ "$DEV" = cuda ] && nvidia-smi -L 2>/dev/null | wc -l || echo 0)

echo "== 1. PP 1: $DEV vs cpu"
train cpu1 --pp 1 --device cpu && train dev1 --pp 1 --device $DEV && echo "   $(compare dev1 cpu1)"

echo "== 2. PP 2, both ranks on one device over gloo, vs PP 1 on it"
if train dev2g --pp 2 --device $DEV --backend gloo; then
  echo "   $(compare dev2g dev1)"
  "$BIN/pmamba-ckpt" diff "$T/dev2g" "$T/dev1" >"$T/diff2.out" 2>&1
  echo "   pmamba-ckpt diff: exit $? ($(grep -E '^(EQUAL|DIFFERENT)' "$T/diff2.out" | head -1))"
fi

echo "== 3. PP 2 over NCCL (needs 2 GPUs; found $NGPU)"
if [ "$NGPU" -ge 2 ]; then
  if train dev2n --pp 2 --device cuda --backend nccl; then
    grep -q "over nccl" "$T/dev2n.out" || true
    r=$(compare dev2n dev2g); echo "   vs gloo: $r"
    [[ $r == *"bitwise equal"* ]] || bad "NCCL and Gloo runs of the same split differ"
    "$BIN/pmamba-ckpt" diff "$T/dev2n" "$T/dev2g" >/dev/null 2>&1 || bad "NCCL and Gloo checkpoints differ"
    "$BIN/pmamba-train" "${common[@]}" --steps 20 --pp 3 --device cpu --resume "$T/dev2n" --ckpt-dir "$T/cpu3" \
        --stop-after 20 >/dev/null 2>&1 && echo "   resumed the NCCL run's checkpoint at PP 3 on the CPU" || bad "resume on CPU failed"
  fi
else
  echo "   SKIPPED: fewer than two GPUs (NCCL refuses two ranks on one device)"
fi

echo "== 4. bf16 autocast on $DEV"
if train devbf --pp 1 --device $DEV --autocast bf16; then
  r=$(compare devbf dev1); echo "   vs float32: $r"
  [[ $r == *"bitwise different"* ]] || bad "bf16 autocast gave float32's losses"
fi

echo "== 5. the $DEV checkpoint on the CPU"
"$BIN/pmamba-ckpt" verify "$T/dev1" >/dev/null 2>&1 && echo "   verify: ok" || bad "verify of the $DEV checkpoint failed"
"$BIN/pmamba-eval" --ckpt "$T/dev1" --device cpu --data selective-copy --samples 32 2>&1 | sed 's/^/   cpu eval: /' | tail -1
"$BIN/pmamba-eval" --ckpt "$T/dev1" --device $DEV --data selective-copy --samples 32 2>&1 | sed "s/^/   $DEV eval: /" | tail -1
echo "== 6. PP 1 x DP 2 on $DEV"
if [ "$NGPU" -ge 2 ]; then be=nccl; else be=gloo; fi
for z in 0 1; do
  if train devdp$z --pp 1 --dp 2 --zero $z --device $DEV --backend $be; then
    echo "   zero $z over $be vs PP 1: $(compare devdp$z dev1)"
    "$BIN/pmamba-ckpt" diff "$T/devdp$z" "$T/dev1" >"$T/diffdp.out" 2>&1
    echo "   pmamba-ckpt diff: exit $? ($(grep -E '^(EQUAL|DIFFERENT)' "$T/diffdp.out" | head -1))"
  fi
done
echo "== 7. tiny-hybrid (Mamba-2 + attention + MLP) on $DEV"
common=(--preset tiny-hybrid --data induction --microbatches 4 --microbatch-size 4 --steps 20 --warmup 2
        --seed 7 --compression none --quiet --timeout 120 --schedule 1f1b)
if train hcpu --pp 1 --device cpu && train hdev --pp 1 --device $DEV; then
  echo "   $DEV vs cpu: $(compare hdev hcpu)"
  train hdev2 --pp 2 --device $DEV --backend gloo && echo "   PP 2 vs PP 1 on $DEV: $(compare hdev2 hdev)"
fi
exit $FAILED
