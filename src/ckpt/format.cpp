#include "src/ckpt/format.h"

#include <ATen/ATen.h>
#include <xxhash.h>

#include <sys/random.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "src/ckpt/errors.h"

namespace pmamba::ckpt {

const char* slot_name(Slot slot) {
  switch (slot) {
    case Slot::kParam: return "param";
    case Slot::kExpAvg: return "exp_avg";
    case Slot::kExpAvgSq: return "exp_avg_sq";
    case Slot::kStep: return "step";
  }
  return "?";
}

std::string step_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}

int64_t parse_step_dir_name(const std::string& name) {
  if (name.size() < 13 || name.compare(0, 5, "step-") != 0) return -1;
  int64_t v = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || i > 20) return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

std::string shard_file_name(int stage, int num_stages, int part, int parts) {
  char buf[96];
  if (parts <= 1) {
    std::snprintf(buf, sizeof buf, "stage-%02d-of-%02d.h5", stage, num_stages);
  } else {
    std::snprintf(buf, sizeof buf, "stage-%02d-of-%02d.part-%d-of-%d.h5", stage, num_stages, part, parts);
  }
  return buf;
}

std::string dataset_path(const std::string& fqn, Slot slot) {
  std::string p = fqn;
  for (char& ch : p) {
    if (ch == '.') ch = '/';
  }
  if (slot == Slot::kParam) return "/model/" + p;
  return "/optim/" + p + "/" + slot_name(slot);
}

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    default: break;
  }
  throw UsageError(std::string("dtype ") + c10::toString(t) + " cannot be stored in a checkpoint");
}

at::ScalarType dtype_from_name(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float64") return at::kDouble;
  if (name == "bfloat16") return at::kBFloat16;
  if (name == "float16") return at::kHalf;
  if (name == "int64") return at::kLong;
  if (name == "int32") return at::kInt;
  throw FormatError("unknown dtype '" + name + "'");
}

size_t dtype_size(at::ScalarType t) { return c10::elementSize(t); }

int64_t checked_numel(const std::vector<int64_t>& shape, const std::string& what) {
  int64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0 || (d > 0 && numel > (int64_t{1} << 50) / d)) {
      std::string s = "[";
      for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
      throw FormatError(what + " declares an absurd shape " + s + "]");
    }
    numel *= d;
  }
  return numel;
}

std::string new_run_id() {
  unsigned char bytes[16];
  size_t got = 0;
  while (got < sizeof bytes) {
    const ssize_t n = ::getrandom(bytes + got, sizeof bytes - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw IoError(std::string("cannot draw a run id from getrandom: ") + std::strerror(errno));
    got += static_cast<size_t>(n);
  }
  char hex[33];
  for (int i = 0; i < 16; ++i) std::snprintf(hex + 2 * i, 3, "%02x", bytes[i]);
  return std::string(hex, 32);
}

bool is_run_id(const std::string& s) {
  if (s.size() != 32) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

uint64_t bytes_digest(const void* data, size_t n) { return XXH3_64bits(data, n); }

uint64_t tensor_digest(const at::Tensor& t) {
  // x86-64 and aarch64 are little-endian, so the in-memory bytes are the stored bytes.
  const at::Tensor c = t.contiguous();
  return bytes_digest(c.data_ptr(), c.nbytes());
}

std::string digest_hex(uint64_t digest) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(digest));
  return buf;
}

uint64_t parse_digest_hex(const std::string& hex) {
  if (hex.size() != 16) throw FormatError("digest '" + hex + "' is not 16 hex digits");
  uint64_t v = 0;
  for (char ch : hex) {
    int d;
    if (ch >= '0' && ch <= '9') d = ch - '0';
    else if (ch >= 'a' && ch <= 'f') d = ch - 'a' + 10;
    else throw FormatError("digest '" + hex + "' is not 16 lowercase hex digits");
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  return v;
}

}  // namespace pmamba::ckpt
