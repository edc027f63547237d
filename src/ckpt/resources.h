// What the machine can give: memory for tensors and models, checked before allocating, so a
// request that cannot fit is refused with the sizes ("needs N bytes") instead of an attempted
// 16 TiB allocation, an "internal error" or the OOM killer.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace pmamba::ckpt {

/// RAM plus swap of this machine, in bytes: more than any one process can allocate.
int64_t memory_bytes();

/// "17592186044416 bytes (16.0 TiB)"
std::string bytes_text(int64_t n);

/// Throws ResourceError("<what> needs N bytes, but this machine has M bytes of memory (RAM +
/// swap)") when `bytes` cannot fit.
void require_memory(int64_t bytes, const std::string& what);

/// A thread count option: 0 (the default) up to 4 x the cores; more only oversubscribes (and
/// 100000 threads stall a process for minutes). Throws UsageError naming `option`.
void check_threads(int threads, const std::string& option = "--threads");

/// at::empty after require_memory; an allocation that fails anyway (other processes hold the
/// memory) becomes the same ResourceError.
at::Tensor allocate(const std::vector<int64_t>& shape, at::ScalarType dtype, const std::string& what);

/// One buffer that many reads take turns in: view() returns a tensor of `shape` and `dtype`
/// over it, growing it (through allocate) to `reserve` bytes the first time, or to what the
/// view needs when that is more. A view is valid until the next view() call.
class ScratchBuffer {
 public:
  at::Tensor view(const std::vector<int64_t>& shape, at::ScalarType dtype, int64_t reserve, const std::string& what);
  /// Frees the buffer (views taken from it must be gone).
  void release() { bytes_ = at::Tensor(); }

 private:
  at::Tensor bytes_;  // (capacity,) uint8
};

}  // namespace pmamba::ckpt
