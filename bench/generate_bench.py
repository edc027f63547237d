#!/usr/bin/env python3
"""pmamba-generate decode throughput against the memory-bandwidth bound and transformers.

mamba-130m-sized random weights (`pmamba-ckpt init`), greedy decoding, prompts of PROMPT tokens,
NEW new tokens, batch 1 and 8, --threads T (default 2). Per round and batch, back to back:
pmamba-generate at PP 1 (its decode tokens/s from stderr), and, when PMAMBA_HF_PYTHON names a
Python with transformers, MambaForCausalLM.generate() on the same weights (exported with
pmamba-convert) with the same threads, cached (torch 1.13 lacks torch._dynamo.mark_static_address,
which transformers' MambaCache calls: a no-op stands in for it), timed around generate() and
counted as new tokens / s (its prefill included, a few percent here), under libgomp's default
wait policy and under OMP_WAIT_POLICY=passive (which pmamba-generate sets for itself); the
faster counts.

The bound: one decode step reads every parameter once (the tied lm_head reads the whole
embedding), so steps/s <= read bandwidth / parameter bytes, and tokens/s <= that x batch. The
read bandwidth is measured here with torch: sum over a 1 GiB float32 tensor on T threads,
median of 7. Medians over rounds.

Usage: bench/generate_bench.py BUILD_DIR [--rounds 3] [--threads 2] [--new 64] [--prompt 16]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HF_SCRIPT = r"""
import json, sys, time, types, torch
if not hasattr(torch, "_dynamo"):
    d = types.ModuleType("torch._dynamo"); d.mark_static_address = lambda *a, **k: None
    sys.modules["torch._dynamo"] = d; torch._dynamo = d
elif not hasattr(torch._dynamo, "mark_static_address"):
    torch._dynamo.mark_static_address = lambda *a, **k: None
import transformers
transformers.logging.set_verbosity_error()
folder, threads, batch, prompt, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
m = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
g = torch.Generator().manual_seed(0)
ids = torch.randint(0, m.config.vocab_size, (batch, prompt), generator=g)
with torch.no_grad():
    m.generate(ids[:, :4], do_sample=False, max_new_tokens=2, use_cache=True, pad_token_id=0, synced_gpus=False)
    t0 = time.perf_counter()
    out = m.generate(ids, do_sample=False, max_new_tokens=new, min_new_tokens=new, use_cache=True, pad_token_id=0,
                     synced_gpus=False, attention_mask=torch.ones_like(ids))
    dt = time.perf_counter() - t0
print(json.dumps({"tokens_per_s": batch * (out.shape[1] - prompt) / dt, "seconds": dt}))
"""

BW_SCRIPT = r"""
import statistics, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
x = torch.ones(1 << 28)  # 1 GiB of float32, touched once before timing
x.sum()
ts = []
for _ in range(7):
    t0 = time.perf_counter(); x.sum(); ts.append(time.perf_counter() - t0)
print(x.numel() * 4 / statistics.median(ts))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--model", default="mamba-130m")
    a = ap.parse_args()
    bin_dir = os.path.join(a.build, "bin")
    hf_py = os.environ.get("PMAMBA_HF_PYTHON")
    with tempfile.TemporaryDirectory(prefix="pmamba-genbench-") as work:
        ckpt, hf = os.path.join(work, "c"), os.path.join(work, "hf")
        subprocess.run([os.path.join(bin_dir, "pmamba-ckpt"), "init", ckpt, "--preset", a.model, "--seed", "1",
                        "--compression", "none"], check=True, stdout=subprocess.DEVNULL)
        info = json.loads(subprocess.run([os.path.join(bin_dir, "pmamba-ckpt"), "info", ckpt, "--json"], check=True,
                                         capture_output=True, text=True).stdout)
        param_bytes = info["parameters"] * 4  # float32; the tie counted once (one matrix, read once per step)
        if hf_py:
            subprocess.run([os.path.join(bin_dir, "pmamba-convert"), "export", ckpt, hf, "--quiet"], check=True)
        # Any Python with torch measures the bandwidth (Debian's python3-torch is the usual one).
        torch_py = next((p for p in (os.environ.get("PMAMBA_TORCH_PYTHON"), sys.executable, "/usr/bin/python3", hf_py)
                         if p and subprocess.run([p, "-c", "import torch"], capture_output=True).returncode == 0), None)
        if torch_py is None:
            raise SystemExit("no Python with torch to measure the read bandwidth (set PMAMBA_TORCH_PYTHON)")
        bw = float(subprocess.run([torch_py, "-c", BW_SCRIPT, str(a.threads)], check=True, capture_output=True,
                                  text=True).stdout)
        vocab = info["config"]["vocab_size"]
        runs = {}
        for r in range(a.rounds):
            for batch in (1, 8):
                prompts = os.path.join(work, f"p{batch}")
                with open(prompts, "w") as f:
                    for b in range(batch):
                        f.write(",".join(str((b * 7919 + i * 104729) % vocab) for i in range(a.prompt)) + "\n")
                p = subprocess.run([os.path.join(bin_dir, "pmamba-generate"), "--ckpt", ckpt, "--prompt-file", prompts,
                                    "--max-new-tokens", str(a.new), "--batch", str(batch), "--threads", str(a.threads)],
                                   check=True, capture_output=True, text=True)
                m = re.search(r"decode (\d+) tokens in ([0-9.]+) s \(([0-9.]+) tokens/s\)", p.stderr)
                runs.setdefault(("pmamba", batch), []).append(float(m.group(3)))
                if hf_py:
                    # transformers under libgomp's default wait policy and under the passive one
                    # pmamba-generate sets for itself; the faster of the two counts.
                    for policy in ("default", "passive"):
                        env = dict(os.environ)
                        env.pop("OMP_WAIT_POLICY", None)
                        if policy == "passive":
                            env["OMP_WAIT_POLICY"] = "passive"
                        h = subprocess.run([hf_py, "-c", HF_SCRIPT, hf, str(a.threads), str(batch), str(a.prompt), str(a.new)],
                                           capture_output=True, text=True, env=env)
                        if h.returncode == 0:
                            tps = json.loads(h.stdout.strip().splitlines()[-1])["tokens_per_s"]
                            runs.setdefault(("hf-" + policy, batch), []).append(tps)
                        else:
                            print("transformers run failed: " + h.stderr[-500:], file=sys.stderr)
    res = {"bench": "generate", "model": a.model, "threads": a.threads, "rounds": a.rounds, "new_tokens": a.new,
           "prompt_tokens": a.prompt, "param_bytes": param_bytes, "read_bandwidth_bytes_per_s": bw, "batches": []}
    print(f"read bandwidth {bw / 1e9:.2f} GB/s on {a.threads} threads; parameters {param_bytes / 1e6:.0f} MB "
          f"-> bound {bw / param_bytes:.1f} steps/s", file=sys.stderr)
    print(f"{'batch':>5} {'pmamba tok/s':>13} {'bound tok/s':>12} {'of bound':>9} {'HF tok/s':>9} {'pmamba/HF':>10}", file=sys.stderr)
    for batch in (1, 8):
        ours = statistics.median(runs[("pmamba", batch)])
        bound = bw / param_bytes * batch
        hf_by_policy = {p: statistics.median(runs[("hf-" + p, batch)]) for p in ("default", "passive")
                        if ("hf-" + p, batch) in runs}
        theirs = max(hf_by_policy.values()) if hf_by_policy else None
        res["batches"].append({"batch": batch, "pmamba_tokens_per_s": ours, "bound_tokens_per_s": bound,
                               "fraction_of_bound": ours / bound, "hf_tokens_per_s": theirs,
                               "hf_tokens_per_s_by_wait_policy": hf_by_policy,
                               "pmamba_over_hf": ours / theirs if theirs else None})
        print(f"{batch:>5} {ours:>13.1f} {bound:>12.1f} {ours / bound:>9.2f} "
              f"{(f'{theirs:.1f}' if theirs else 'skipped'):>9} {(f'{ours / theirs:.2f}' if theirs else '-'):>10}",
              file=sys.stderr)
    if not hf_py:
        print("transformers: skipped (set PMAMBA_HF_PYTHON to a Python with transformers)", file=sys.stderr)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
