#!/usr/bin/env python3
"""Checks that Hugging Face `transformers` can load a model folder and reproduce expected logits.

Usage:  hf_from_pretrained_check.py EXPORTED_DIR EXPECTED_SAFETENSORS [--tol 1e-5]
                                    [--class NAME] [--no-greedy]

EXPORTED_DIR is a Hugging Face model folder (config.json + model.safetensors, or sharded
model-*-of-*.safetensors + model.safetensors.index.json), e.g. one written by
`pmamba-convert export`. EXPECTED_SAFETENSORS holds `input_ids` int64 (B, L) and `logits`
float32 (B, L, V), optionally also `greedy_prompt` int64 (1, P) and `greedy_tokens` int64 (1, N),
as in tests/fixtures/hf/*/expected.safetensors.

Checks, each printed; any failure -> exit 1:
  1. AutoModelForCausalLM.from_pretrained(EXPORTED_DIR, torch_dtype=float32,
     output_loading_info=True) succeeds, with no missing, unexpected or mismatched keys and no
     error messages. (HF would otherwise silently keep random init for missing tensors.)
  2. The loaded model's class name equals config.json's architectures[0] and, with --class,
     NAME; it is a *ForCausalLM.
  3. eval() + no_grad(): max |model(input_ids, use_cache=False).logits - logits| <= tol
     (shapes must match exactly, so a padded vocab fails).
  4. Unless --no-greedy, when the expected file has greedy_prompt/greedy_tokens: an argmax
     loop over uncached forwards (not generate(), which on torch 1.13 + Python 3.11 trips over
     torch.distributed.fsdp, and whose Mamba-1 cache needs torch._dynamo) reproduces them.

Exit status: 0 all checks passed, 1 a check failed, 77 SKIPPED (transformers, torch or
safetensors not importable: the automake/ctest "skip" convention), 2 usage error.
"""

import argparse
import json
import os
import sys


def skip(what, err):
    print(f"SKIPPED: {what} is not importable ({type(err).__name__}: {err})")
    sys.exit(77)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("exported_dir")
    ap.add_argument("expected")
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--class", dest="cls", default=None, help="required model class name")
    ap.add_argument("--no-greedy", action="store_true", help="skip the greedy-token check")
    args = ap.parse_args()

    try:
        import transformers
    except Exception as e:  # ImportError, or e.g. a broken torch underneath
        skip("transformers", e)
    try:
        import torch
    except Exception as e:
        skip("torch", e)
    try:
        from safetensors.torch import load_file
    except Exception as e:
        skip("safetensors", e)
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()  # "fast path is not available" warnings
    transformers.logging.disable_progress_bar()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")

    failures = []

    def check(ok, msg):
        print(("ok:   " if ok else "FAIL: ") + msg)
        if not ok:
            failures.append(msg)
        return ok

    exp = load_file(args.expected)
    for k in ("input_ids", "logits"):
        if k not in exp:
            print(f"FAIL: {args.expected} has no tensor '{k}' (has {sorted(exp)})")
            return 1
    ids, want = exp["input_ids"], exp["logits"]

    cfg_path = os.path.join(args.exported_dir, "config.json")
    try:
        with open(cfg_path) as f:
            # json.load accepts the non-standard Infinity that HF writes for time_step_limit
            arch = (json.load(f).get("architectures") or [None])[0]
    except (OSError, ValueError) as e:
        print(f"FAIL: cannot read {cfg_path}: {e}")
        return 1

    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            args.exported_dir, torch_dtype=torch.float32, output_loading_info=True)
    except Exception as e:
        print(f"FAIL: from_pretrained({args.exported_dir}) raised {type(e).__name__}: {e}")
        return 1
    model.eval()
    for what in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        got = list(info.get(what) or [])
        check(not got, f"from_pretrained {what}: {got if got else 'none'}")

    name = type(model).__name__
    check(name == arch, f"model class {name}, config.json architectures[0] {arch}")
    check(name.endswith("ForCausalLM"), f"model class {name} is a *ForCausalLM")
    if args.cls is not None:
        check(name == args.cls, f"model class {name}, required {args.cls}")
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    check(dtypes == ["torch.float32"], f"parameter dtypes {dtypes}")

    with torch.no_grad():
        got = model(input_ids=ids, use_cache=False).logits.float()
    if check(tuple(got.shape) == tuple(want.shape),
             f"logits shape {tuple(got.shape)}, expected {tuple(want.shape)}"):
        diff = (got - want).abs().max().item()
        check(diff <= args.tol, f"max |logits - expected| = {diff:.3e} (tol {args.tol:g}; "
                                f"max |expected| = {want.abs().max().item():.3f})")

    if not args.no_greedy and "greedy_prompt" in exp and "greedy_tokens" in exp:
        seq, n = exp["greedy_prompt"], exp["greedy_tokens"].shape[1]
        with torch.no_grad():
            for _ in range(n):
                nxt = model(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
                seq = torch.cat([seq, nxt], dim=1)
        new = seq[:, exp["greedy_prompt"].shape[1]:]
        check(torch.equal(new, exp["greedy_tokens"]),
              f"greedy tokens {new[0].tolist()}, expected {exp['greedy_tokens'][0].tolist()}")

    if failures:
        print(f"FAILED: {len(failures)} check(s)")
        return 1
    print("PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
