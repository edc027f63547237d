// Where a rank computes and how it talks to its neighbours: the device (the CPU, or one CUDA
// device per local rank), the c10d backend that carries tensors between stages (Gloo, or NCCL
// for CUDA tensors), and optional bfloat16 autocast of the forward pass.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

namespace pmamba::pp {

/// "cpu" | "cuda" | "cuda:N" | "auto" (CUDA when this LibTorch has it and a device is visible,
/// else the CPU). A bare "cuda" picks device local_rank % device_count, as torchrun users
/// expect. Throws UsageError for an unknown name or a CUDA device this process cannot use.
/// Creates no CUDA context (a launcher can check options without holding GPU memory).
c10::Device resolve_device(const std::string& name, int local_rank);

/// Makes a CUDA device the current one (NCCL and the caching allocator use it); no-op on CPU.
void make_current(const c10::Device& device);

/// True when this LibTorch was built with ProcessGroupNCCL.
bool have_nccl();

/// "gloo" | "nccl" | "auto" (NCCL for CUDA devices when available, else Gloo) -> "gloo" or
/// "nccl". Gloo with a CUDA device stages every message through host memory (it works when
/// several ranks share one GPU, which NCCL refuses). Throws UsageError for NCCL on the CPU or
/// without NCCL support.
std::string resolve_backend(const std::string& name, const c10::Device& device);

/// Bytes of host heap this process has allocated and not freed (glibc's mallinfo2: in-use
/// chunks plus mmap'd blocks), which is where LibTorch's CPU tensors live; -1 on other devices
/// (not measured there). For high-water marks over a phase, as differences.
int64_t memory_in_use(const c10::Device& device);

/// --timeout: a finite number of seconds > 0 and at most a week. Throws UsageError.
void check_timeout(double seconds);

/// "none" | "bf16"; returns the lower-precision dtype, or Undefined for none.
c10::ScalarType parse_autocast(const std::string& name);

/// While alive, ops on `device_type` run under LibTorch's autocast with `dtype` (matmuls and
/// convolutions in bfloat16, reductions in float32); restores the previous state on exit.
/// With dtype Undefined it does nothing. Backward passes must run outside it.
class AutocastGuard {
 public:
  AutocastGuard(c10::DeviceType device_type, c10::ScalarType dtype);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

  /// Drops autocast's cache of down-cast weights; call after the weights change.
  static void clear_cache();

 private:
  c10::DeviceType device_type_;
  bool active_ = false, was_enabled_ = false;
  c10::ScalarType was_dtype_ = c10::ScalarType::Undefined;
};

}  // namespace pmamba::pp
