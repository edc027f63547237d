#include "src/ckpt/resources.h"

#include <ATen/ATen.h>
#include <sys/sysinfo.h>

#include <algorithm>
#include <cstdio>
#include <thread>

#include "src/ckpt/errors.h"
#include "src/ckpt/format.h"
#include "src/ckpt/text.h"

namespace pmamba::ckpt {

int64_t memory_bytes() {
  struct sysinfo si {};
  if (::sysinfo(&si) != 0) return INT64_MAX;
  const long double unit = si.mem_unit ? si.mem_unit : 1;
  const long double total = (static_cast<long double>(si.totalram) + static_cast<long double>(si.totalswap)) * unit;
  return total > static_cast<long double>(INT64_MAX) ? INT64_MAX : static_cast<int64_t>(total);
}

std::string bytes_text(int64_t n) { return std::to_string(n) + " bytes (" + format_bytes(n) + ")"; }

void require_memory(int64_t bytes, const std::string& what) {
  const int64_t have = memory_bytes();
  if (bytes > have) {
    throw ResourceError(what + " needs " + bytes_text(bytes) + ", but this machine has " + bytes_text(have) +
                        " of memory (RAM + swap)");
  }
}

void check_threads(int threads, const std::string& option) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (threads < 0 || threads > 4 * cores) {
    throw UsageError(option + " must be in [0, " + std::to_string(4 * cores) + "] (0: the default; this machine has " +
                     std::to_string(cores) + " cores), found " + std::to_string(threads));
  }
}

namespace {

int64_t checked_bytes(const std::vector<int64_t>& shape, at::ScalarType dtype, const std::string& what) {
  const int64_t numel = checked_numel(shape, what);
  const int64_t elem = static_cast<int64_t>(c10::elementSize(dtype));
  if (numel > INT64_MAX / std::max<int64_t>(elem, 1)) throw FormatError(what + " declares an absurd shape");
  return numel * elem;
}

}  // namespace

at::Tensor allocate(const std::vector<int64_t>& shape, at::ScalarType dtype, const std::string& what) {
  const int64_t bytes = checked_bytes(shape, dtype, what);
  require_memory(bytes, what);
  try {
    return at::empty(shape, at::TensorOptions().dtype(dtype));
  } catch (const c10::Error&) {
    throw ResourceError(what + " needs " + bytes_text(bytes) + ", which could not be allocated (memory in use elsewhere?)");
  } catch (const std::bad_alloc&) {
    throw ResourceError(what + " needs " + bytes_text(bytes) + ", which could not be allocated (memory in use elsewhere?)");
  }
}

at::Tensor ScratchBuffer::view(const std::vector<int64_t>& shape, at::ScalarType dtype, int64_t reserve,
                               const std::string& what) {
  const int64_t bytes = checked_bytes(shape, dtype, what);
  if (!bytes_.defined() || bytes_.numel() < bytes) {
    bytes_ = at::Tensor();  // the old buffer goes first
    bytes_ = allocate({std::max(bytes, reserve)}, at::kByte, what);
  }
  return at::from_blob(bytes_.data_ptr(), shape, at::TensorOptions().dtype(dtype));
}

}  // namespace pmamba::ckpt
