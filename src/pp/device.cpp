// Autocast's C++ API changed in LibTorch 2.4 (per-device-type functions replaced set_enabled /
// set_cpu_enabled); both spellings are kept here and nowhere else.
#include "src/pp/device.h"

#include <ATen/autocast_mode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <malloc.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <thread>
#include <torch/cuda.h>
#include <torch/version.h>

#include "src/pp/errors.h"

namespace pmamba::pp {

namespace {

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
bool autocast_enabled(c10::DeviceType t) { return at::autocast::is_autocast_enabled(t); }
void set_autocast_enabled(c10::DeviceType t, bool on) { at::autocast::set_autocast_enabled(t, on); }
c10::ScalarType autocast_dtype(c10::DeviceType t) { return at::autocast::get_autocast_dtype(t); }
void set_autocast_dtype(c10::DeviceType t, c10::ScalarType d) { at::autocast::set_autocast_dtype(t, d); }
#else
bool autocast_enabled(c10::DeviceType t) {
  return t == c10::DeviceType::CUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
}
void set_autocast_enabled(c10::DeviceType t, bool on) {
  if (t == c10::DeviceType::CUDA) {
    at::autocast::set_enabled(on);
  } else {
    at::autocast::set_cpu_enabled(on);
  }
}
c10::ScalarType autocast_dtype(c10::DeviceType t) {
  return t == c10::DeviceType::CUDA ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
}
void set_autocast_dtype(c10::DeviceType t, c10::ScalarType d) {
  if (t == c10::DeviceType::CUDA) {
    at::autocast::set_autocast_gpu_dtype(d);
  } else {
    at::autocast::set_autocast_cpu_dtype(d);
  }
}
#endif

}  // namespace

c10::Device resolve_device(const std::string& name, int local_rank) {
  if (name == "cpu") return c10::Device(c10::kCPU);
  const int count = torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0;
  if (name == "auto" && count == 0) return c10::Device(c10::kCPU);
  if (name != "auto" && name != "cuda" && name.rfind("cuda:", 0) != 0) {
    throw UsageError("unknown device '" + name + "' (expected cpu, cuda, cuda:N or auto)");
  }
  if (count == 0) {
    throw UsageError("--device " + name + " asks for a CUDA device but " +
                     (torch::cuda::is_available() ? std::string("none is visible")
                                                  : std::string("this LibTorch has no CUDA support or no driver is loaded")));
  }
  int index = local_rank % count;
  if (name.rfind("cuda:", 0) == 0) {
    const std::string digits = name.substr(5);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 4) {
      throw UsageError("bad device '" + name + "' (expected cuda:N)");
    }
    index = std::stoi(digits);
    if (index >= count) {
      throw UsageError("--device " + name + " but only " + std::to_string(count) + " CUDA device" +
                       (count == 1 ? " is" : "s are") + " visible");
    }
  }
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

void make_current(const c10::Device& device) {
  if (device.is_cuda()) c10::impl::getDeviceGuardImpl(c10::kCUDA)->setDevice(device);
}

bool have_nccl() {
#ifdef USE_C10D_NCCL
  return true;
#else
  return false;
#endif
}

std::string resolve_backend(const std::string& name, const c10::Device& device) {
  if (name == "auto") return device.is_cuda() && have_nccl() ? "nccl" : "gloo";
  if (name == "gloo") return name;
  if (name != "nccl") throw UsageError("unknown backend '" + name + "' (expected gloo, nccl or auto)");
  if (!device.is_cuda()) throw UsageError("--backend nccl needs --device cuda (NCCL moves CUDA tensors only)");
  if (!have_nccl()) throw UsageError("--backend nccl: this LibTorch was built without ProcessGroupNCCL");
  return name;
}

int64_t memory_in_use(const c10::Device& device) {
  if (!device.is_cpu()) return -1;
  const struct mallinfo2 m = ::mallinfo2();
  return static_cast<int64_t>(m.uordblks + m.hblkhd);
}

c10::ScalarType parse_autocast(const std::string& name) {
  if (name == "none") return c10::ScalarType::Undefined;
  if (name == "bf16" || name == "bfloat16") return c10::ScalarType::BFloat16;
  throw UsageError("unknown autocast mode '" + name + "' (expected none or bf16)");
}

AutocastGuard::AutocastGuard(c10::DeviceType device_type, c10::ScalarType dtype) : device_type_(device_type) {
  if (dtype == c10::ScalarType::Undefined) return;
  active_ = true;
  was_enabled_ = autocast_enabled(device_type);
  was_dtype_ = autocast_dtype(device_type);
  set_autocast_dtype(device_type, dtype);
  set_autocast_enabled(device_type, true);
}

AutocastGuard::~AutocastGuard() {
  if (!active_) return;
  set_autocast_enabled(device_type_, was_enabled_);
  set_autocast_dtype(device_type_, was_dtype_);
}

void AutocastGuard::clear_cache() { at::autocast::clear_cache(); }

void check_timeout(double seconds) {
  if (!std::isfinite(seconds) || seconds <= 0 || seconds > 7 * 24 * 3600.0) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%g", seconds);
    throw UsageError(std::string("--timeout must be a finite number of seconds in (0, 604800], found ") + buf);
  }
}

}  // namespace pmamba::pp
