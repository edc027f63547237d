#!/usr/bin/env python3
"""Groups the samples of a `perf record` of pmamba-train by part of the training step.

Input on stdin, one of:
  --script: `perf script -F comm,tid,period,ip,sym,dso` of a recording with call chains
            (`perf record --call-graph dwarf`): each sample is classified by its leaf frame and,
            for element-wise kernels, by the nearest caller that names a part (the optimizer's
            and the loss's ATen kernels are the model's kernels; only the caller tells them apart).
            With Debian's LibTorch the unwinder stops at at::TensorIteratorBase::serial_for_each,
            so ATen kernels mostly stay "element-wise" whoever called them: "optimizer" is then
            pmamba's own fused AdamW kernel and "loss" only what names softmax/cross-entropy;
  default:  `perf report --no-children --sort dso,sym --stdio` (leaf frames only: the optimizer
            and the loss then count as element-wise).
Percentages are of all samples (CPU time summed over the threads, not wall time).
Prints a table (and the top leaf symbols); --json-out FILE writes {"percent": {...}, "top": [...]}.
"""
import argparse
import collections
import json
import re
import sys

CATEGORIES = [
    ("sgemm", "sgemm (OpenBLAS kernels)"),
    ("scan_fwd", "fused scan forward (scan_fast.cpp)"),
    ("scan_bwd", "fused scan backward (scan_fast.cpp)"),
    ("conv", "causal conv1d"),
    ("copies", "ATen copies (copy_, contiguous, memcpy)"),
    ("elementwise", "other ATen element-wise / reductions"),
    ("loss", "softmax / cross-entropy"),
    ("optimizer", "optimizer (AdamW)"),
    ("allocator", "allocator (malloc/free, page faults, memset)"),
    ("wait", "OpenMP / BLAS thread waiting (gomp, blas_thread_server, yield)"),
    ("other", "other"),
]
# Samples before the first step (dynamic linking, model construction and init) are left out of
# the percentages and counted on their own.
STARTUP = ("startup", "startup: dynamic linking, model init (not in the %)")

ALLOC_SYMS = re.compile(
    r"^(malloc|free|cfree|calloc|realloc|_int_malloc|_int_free|_int_realloc|malloc_consolidate|sysmalloc|unlink_chunk|"
    r"__libc_(malloc|free|calloc|realloc|memalign)|_mid_memalign|posix_memalign|aligned_alloc|tcache_\w+|"
    r"__memset\w*|memset|mmap\w*|munmap\w*|__munmap|__mmap|madvise|__madvise|brk|__brk|sbrk|__sbrk|"
    r"operator new|operator delete)|c10::alloc_cpu|c10::free_cpu|c10::DefaultCPUAllocator|c10::ProfiledCPUMemoryReporter|"
    r"c10::memset_junk")
KERNEL_FAULT = re.compile(r"fault|clear_page|alloc_pages|__alloc_pages|get_page_from_freelist|do_anonymous_page|"
                          r"handle_mm_fault|mmap|munmap|unmap|zap_|free_pages|free_pcp|release_pages|lru_|"
                          r"page_remove_rmap|memcg|madvise|brk|rmqueue|folio|tlb|vma|pte", re.I)
KERNEL_WAIT = re.compile(r"sched|yield|futex|schedule|switch|idle|wake|nanosleep|hrtimer", re.I)
COPY_SYMS = re.compile(r"copy_|copy_kernel|direct_copy|contiguous|clone|memcpy|memmove|__memmove|__memcpy|"
                       r"_to_copy|transpose|permute|cat_serial|CatArray|index_select|narrow_copy|as_strided", re.I)
LOSS_SYMS = re.compile(r"softmax|cross_entropy|nll_loss|log_sigmoid|logsumexp", re.I)


def is_kernel(dso):
    return dso.startswith("[kernel") or dso in ("[vdso]",) or "kallsyms" in dso


def classify(frames):
    """frames: [(sym, dso)], leaf first."""
    if not frames:
        return "other"
    frames = [(re.sub(r"^__GI_", "", s), d) for s, d in frames]
    sym, dso = frames[0]
    base = dso.rsplit("/", 1)[-1]
    if "ld-linux" in base or any(re.search(r"init_parameters|_dl_start|dl_main|_dl_init|dl_open_worker|"
                                           r"_dl_runtime_resolve|_dl_fixup|__libc_start_call_main.*static", s)
                                 for s, d in frames if not s.startswith("main")):
        if "ld-linux" in base or any(re.search(r"init_parameters|_dl_start|dl_main|_dl_init|dl_open_worker", s)
                                     for s, d in frames):
            return "startup"
    if is_kernel(dso):
        user = next(((s, d) for s, d in frames[1:] if not is_kernel(d)), None)
        kchain = " ".join(s for s, d in frames if is_kernel(d))
        if re.search(r"fault", kchain, re.I) or (user is None and KERNEL_FAULT.search(sym)):
            return "allocator"
        if user is not None:
            us = user[0]
            ubase = user[1].rsplit("/", 1)[-1]
            if "libgomp" in ubase or "blas_thread_server" in us or re.search(r"sched_yield|futex|pthread_cond|sem_wait|pthread_join", us):
                return "wait"
            if ALLOC_SYMS.search(us) or re.search(r"mmap|munmap|madvise|brk", us):
                return "allocator"
            if KERNEL_FAULT.search(kchain):
                return "allocator"
        if KERNEL_WAIT.search(kchain):
            return "wait"
        if KERNEL_FAULT.search(kchain):
            return "allocator"
        return "other"
    if "libgomp" in base or "libpthreadpool" in base or "blas_thread_server" in sym or re.search(r"^(__)?sched_yield|futex|pthread_cond_wait|pthread_barrier", sym):
        return "wait"
    if "openblas" in base or "libblas" in base or re.match(r"^[sd]gemm|^gemm_|^blas_", sym):
        return "sgemm"
    if ALLOC_SYMS.search(sym):
        return "allocator"
    # pmamba's own kernels (the scan and the conv), by the leaf or the nearest pmamba frame.
    if "pmamba::kernels::cpu::" in sym and re.search(r"update_range|adamw", sym, re.I):
        return "optimizer"  # the fused AdamW (kernels/cpu/adamw_fast.cpp)
    if "pmamba::kernels::cpu::" in sym and re.search(r"activate|conv|preact|backward_channel", sym):
        return "conv"  # kernels/cpu/conv_fast.cpp
    if "pmamba::kernels::cpu::" in sym and not "conv" in sym:
        if "backward" in sym:
            return "scan_bwd"
        if re.search(r"forward|step_channel|load_tile|store_tile|lane_sum", sym):
            return "scan_fwd"
    for s, d in frames[:12]:
        if re.search(r"forward_group|scan_forward|ScanForward|scan_step", s):
            return "scan_fwd"
        if re.search(r"backward_group|scan_backward|ScanBackward", s):
            return "scan_bwd"
        if "causal_conv1d" in s or "conv1d" in s.lower():
            return "conv"
        if "pmamba::" not in s and not re.search(r"libgomp|libm\.|libmvec|\[unknown\]", d) and s != "[unknown]":
            break  # left the kernel: an ATen op the kernel wrapper called is judged below
    # An ATen kernel: the nearest caller naming a part decides.
    for s, d in frames:
        if re.search(r"pmamba::pp::AdamW|AdamW::step|adamw|_fused_adam", s, re.I):
            return "optimizer"
        if LOSS_SYMS.search(s):
            return "loss"
        if "causal_conv1d" in s:
            return "conv"
        if re.search(r"forward_group|scan_forward|ScanForward", s):
            return "scan_fwd"
        if re.search(r"backward_group|scan_backward|ScanBackward", s):
            return "scan_bwd"
        if re.search(r"pmamba::", s) or "main" == s:
            break
    if LOSS_SYMS.search(sym):
        return "loss"
    if COPY_SYMS.search(sym):
        return "copies"
    if re.search(r"libtorch|libc10|libATen|libm\.|libmvec|libsleef", base) or "at::" in sym or "c10::" in sym:
        return "elementwise"
    return "other"


FRAME = re.compile(r"^\s*([0-9a-fA-F]+)\s+(.*?)\s+\(([^()]*)\)\s*$")


def parse_script(lines):
    """Yields (period, frames) per sample of `perf script -F comm,tid,period,ip,sym,dso`."""
    period, frames = None, []
    for line in lines:
        if not line.strip():
            if period is not None:
                yield period, frames
            period, frames = None, []
            continue
        if line[0] not in " \t":
            if period is not None:
                yield period, frames
            parts = line.split()
            try:
                period = int(parts[-1])
            except ValueError:
                period = 1
            frames = []
            continue
        m = FRAME.match(line)
        if m:
            sym = re.sub(r"\+0x[0-9a-f]+$", "", m.group(2))
            frames.append((sym, m.group(3)))
    if period is not None:
        yield period, frames


REPORT = re.compile(r"^\s*([0-9.]+)%\s+(\S+)\s+\[([.k])\]\s+(.*?)\s*$")


def parse_report(lines):
    for line in lines:
        m = REPORT.match(line)
        if m:
            dso = "[kernel.kallsyms]" if m.group(3) == "k" else m.group(2)
            yield float(m.group(1)), [(m.group(4), dso)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--script", action="store_true", help="stdin is perf script output with call chains")
    ap.add_argument("--config", default="", help="a label for the table")
    ap.add_argument("--json-out")
    ap.add_argument("--top", type=int, default=12)
    a = ap.parse_args()
    samples = parse_script(sys.stdin) if a.script else parse_report(sys.stdin)
    cat = collections.Counter()
    leaf = collections.Counter()
    leaf_cat = {}
    n = 0
    for w, frames in samples:
        c = classify(frames)
        cat[c] += w
        n += 1
        if frames and c != "startup":
            key = (frames[0][0][:90], frames[0][1].rsplit("/", 1)[-1])
            leaf[key] += w
            leaf_cat[key] = c
    startup = cat.pop("startup", 0)
    total = sum(cat.values()) or 1
    pct = {k: round(100.0 * cat[k] / total, 1) for k, _ in CATEGORIES}
    out = sys.stdout
    print(f"\nperf breakdown{(' (' + a.config + ')') if a.config else ''}: {n} samples, % of CPU time "
          f"({'leaf + callers' if a.script else 'leaf frames only'})", file=out)
    for k, label in CATEGORIES:
        print(f"  {pct[k]:5.1f}%  {label}", file=out)
    print(f"  ({100.0 * startup / (total + startup):.1f}% of all samples were startup, left out above)", file=out)
    top = []
    print("  top leaf symbols:", file=out)
    for (s, d), w in leaf.most_common(a.top):
        p = 100.0 * w / total
        top.append({"sym": s, "dso": d, "percent": round(p, 2), "category": leaf_cat[(s, d)]})
        print(f"    {p:5.1f}%  {s}  [{d}]  -> {leaf_cat[(s, d)]}", file=out)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"config": a.config, "samples": n, "percent": pct, "startup_percent_of_all": round(100.0 * startup / (total + startup), 1), "top": top}, f)


if __name__ == "__main__":
    main()
