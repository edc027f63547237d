#!/usr/bin/env python3
"""Training tokens/s of Hugging Face transformers' Mamba (used by bench/train_bench.sh).

MambaForCausalLM with the given shape (state 16, expand 2, conv 4, dt_rank auto, tied
embeddings, fp32, no biases in the projections, conv bias), random init, AdamW (lr 1e-3, torch's
defaults otherwise), a fixed random batch of BATCH x LEN token ids, loss = the model's own
shifted cross-entropy (labels = input_ids). `--path mambapy` sets use_mambapy=True (the mamba.py
parallel scan, taken in training mode); `--path seq` is transformers' default CPU path (the
sequential loop over L). torch.set_num_threads(THREADS); OMP_NUM_THREADS is set by the caller.
Times STEPS steps after WARMUP; prints one JSON line: per-step seconds, median tokens/s,
parameter count (the tie counted once).

Usage: hf_train.py --d-model 384 --layers 12 --vocab 256 --batch 4 --len 256 --threads 2
                   --path mambapy|seq [--steps 4] [--warmup 1]
"""
import argparse
import json
import statistics
import sys
import time
import types


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-model", type=int, required=True)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--len", type=int, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--path", choices=["mambapy", "seq"], required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    a = ap.parse_args()

    import torch
    # transformers 4.49 touches torch._dynamo in places; torch 1.13 has none.
    if not hasattr(torch, "_dynamo"):
        d = types.ModuleType("torch._dynamo")
        d.mark_static_address = lambda *x, **k: None
        d.is_compiling = lambda: False
        sys.modules["torch._dynamo"] = d
        torch._dynamo = d
    import transformers
    transformers.logging.set_verbosity_error()
    if a.path == "mambapy":
        import mambapy.pscan  # noqa: F401  (fail here, visibly, rather than fall back silently)
        from transformers.models.mamba import modeling_mamba
        assert modeling_mamba.pscan is not None, "transformers did not pick up mambapy"

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = transformers.MambaConfig(
        vocab_size=a.vocab, hidden_size=a.d_model, num_hidden_layers=a.layers, state_size=16, expand=2,
        conv_kernel=4, time_step_rank="auto", use_bias=False, use_conv_bias=True, tie_word_embeddings=True,
        use_mambapy=(a.path == "mambapy"), use_cache=False, torch_dtype="float32")
    model = transformers.MambaForCausalLM(cfg).float().train()
    assert model.lm_head.weight.data_ptr() == model.backbone.embeddings.weight.data_ptr(), "embeddings not tied"
    params = sum(p.numel() for p in model.parameters())  # parameters() yields the tied matrix once
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, a.vocab, (a.batch, a.len), generator=g)
    times, losses = [], []
    for s in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        out = model(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        losses.append(float(out.loss))
        if s >= a.warmup:
            times.append(dt)
        print(f"  hf {a.path} step {s}: {dt:.3f} s  loss {losses[-1]:.4f}", file=sys.stderr, flush=True)
    med = statistics.median(times)
    print(json.dumps({"path": a.path, "threads": torch.get_num_threads(), "batch": a.batch, "len": a.len,
                      "parameters": params, "step_s": times, "median_step_s": med,
                      "tokens_per_s": a.batch * a.len / med, "transformers": transformers.__version__,
                      "torch": torch.__version__, "loss_first": losses[0], "loss_last": losses[-1]}))


if __name__ == "__main__":
    main()
