#!/usr/bin/env bash
# The main job: train a small Mamba at PP 2 (1F1B) on selective copying, checkpointing per
# stage; reshard the last checkpoint to PP 3 and PP 1 and verify them; resume at PP 3; evaluate
# at PP 1 on held-out samples; print a summary. Runs a few minutes on 2 CPU cores.
set -euo pipefail
BUILD=${1:-build}
BIN=$BUILD/bin
D=$BUILD/demo
STEPS=${DEMO_STEPS:-1600}
STOP=$((STEPS * 3 / 4))
EVERY=$(( STEPS / 8 > 0 ? STEPS / 8 : 1 ))
rm -rf "$D"
mkdir -p "$D"
printf '{"d_model": 64, "n_layer": 4, "vocab_size": 16, "d_state": 16}\n' > "$D/model.json"
TASK=(--data selective-copy --copy-tokens 4 --copy-slots 12 --task-vocab 8)
TRAIN=(--config "$D/model.json" "${TASK[@]}" --schedule 1f1b --microbatches 4 --microbatch-size 8
       --steps "$STEPS" --warmup 50 --lr 3e-3 --min-lr 3e-4 --weight-decay 0 --seed 1 --threads 1
       --ckpt-every "$EVERY" --keep-last 3)

echo "== 1. train at PP 2 (1F1B) to step $STOP of $STEPS, a checkpoint every $EVERY steps"
"$BIN/pmamba-train" "${TRAIN[@]}" --pp 2 --stop-after "$STOP" --ckpt-dir "$D/run" --metrics "$D/train.jsonl" --quiet
"$BIN/pmamba-ckpt" info "$D/run" | sed 's/^/   /'

echo "== 2. reshard the last checkpoint to PP 3 and to PP 1, verify both, compare with the original"
"$BIN/pmamba-reshard" "$D/run" "$D/pp3" --pp 3 --partition 1,2,1 --quiet
"$BIN/pmamba-reshard" "$D/run" "$D/pp1" --pp 1 --compression zstd:3 --quiet
V3=$("$BIN/pmamba-ckpt" verify "$D/pp3" | tail -1)
V1=$("$BIN/pmamba-ckpt" verify "$D/pp1" | tail -1)
D3=$("$BIN/pmamba-ckpt" diff "$D/run" "$D/pp3" | tail -1)
D1=$("$BIN/pmamba-ckpt" diff "$D/run" "$D/pp1" | tail -1)
echo "   pp3 verify: $V3"
echo "   pp1 verify: $V1"
echo "   run vs pp3: $D3"
echo "   run vs pp1: $D1"

echo "== 3. resume the PP 3 checkpoint at PP 3 and train to step $STEPS"
"$BIN/pmamba-train" "${TRAIN[@]}" --pp 3 --partition 1,2,1 --resume "$D/pp3" --ckpt-dir "$D/pp3" \
    --metrics "$D/resume.jsonl" --quiet

echo "== 4. evaluate the final checkpoint at PP 1 on 256 held-out samples"
EVAL=$("$BIN/pmamba-eval" --ckpt "$D/pp3" --pp 1 "${TASK[@]}" --samples 256)
echo "$EVAL" | sed 's/^/   /'

echo "== summary"
python3 - "$D" "$STEPS" "$V3" "$V1" "$D3" "$D1" <<'PY'
import json, os, sys
d, steps = sys.argv[1], int(sys.argv[2])
v3, v1, d3, d1 = sys.argv[3:7]
train = [j for j in map(json.loads, open(os.path.join(d, "train.jsonl"))) if "loss" in j]
resume = [j for j in map(json.loads, open(os.path.join(d, "resume.jsonl"))) if "loss" in j]
def avg(rows, k):
    rows = rows[len(rows) // 2:]
    return sum(r[k] for r in rows) / len(rows)
def size(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs if f.endswith(".h5"))
print(f"   steps: {train[-1]['step']} at PP 2, then {resume[0]['step']}..{resume[-1]['step']} at PP 3 (of {steps})")
last = resume[-10:]
print(f"   training accuracy (last {len(last)} steps): {sum(r['accuracy'] for r in last) / len(last):.3f}, "
      f"loss {resume[-1]['loss']:.3f} (chance accuracy 1/6 = 0.167)")
print(f"   throughput: {avg(train, 'tokens_per_s'):.0f} tokens/s at PP 2, {avg(resume, 'tokens_per_s'):.0f} at PP 3; "
      f"bubble {avg(train, 'bubble'):.2f} / {avg(resume, 'bubble'):.2f}")
step = os.path.join(d, "run", open(os.path.join(d, "run", "latest")).read().strip())
pp3 = os.path.join(d, "pp3", open(os.path.join(d, "pp3", "latest")).read().strip())
print(f"   checkpoint size (model + AdamW state): PP 2 {size(step)/1e6:.2f} MB (zstd:1), "
      f"PP 3 {size(pp3)/1e6:.2f} MB (zstd:1), PP 1 {size(os.path.join(d, 'pp1'))/1e6:.2f} MB (zstd:3)")
print(f"   resharded PP 2 -> 3 and -> 1: verify {v3.split(':')[0]} / {v1.split(':')[0]}; "
      f"diff vs PP 2 {d3.split(':')[0]} / {d1.split(':')[0]}")
PY
echo "$EVAL" | grep -o 'accuracy [0-9.]*' | sed 's/^/   held-out /'
echo "   outputs in $D"
