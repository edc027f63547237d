// Keeping freed memory in the process. glibc's malloc serves large blocks (above 128 KiB at
// first, up to 32 MiB as it adapts) with mmap and unmaps them as soon as they are freed, and
// trims the heap's free top; a training step frees and reallocates the same activations,
// gradients and logits every step, so each step would fault in fresh pages again, and on a VM
// that hands idle memory back to the host those first touches are ~10x slower. Measured with
// pmamba-train on 2 threads (bench/RESULTS.md, "Training throughput"): mamba-130m shape +50%
// tokens/s, small +4-18%, peak RSS +6%.
#pragma once

namespace pmamba::kernels {

/// Makes glibc's malloc keep what the process frees for reuse: every block from the heap (no
/// mmap) and no trimming below 2 GiB of free top. PMAMBA_MALLOC_RETAIN=0 leaves malloc as it is.
/// Call it once, early in main, before large allocations. Returns whether it changed anything
/// (false when disabled or not glibc). Results do not depend on it, only speed and peak memory.
bool retain_freed_memory();

}  // namespace pmamba::kernels
