#include "src/pp/handshake.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "src/pp/errors.h"

namespace pmamba::pp {

HeaderField HeaderField::real(std::string name, double v) {
  int64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return {std::move(name), kReal, bits};
}

HeaderField HeaderField::text(std::string name, const std::string& v) {
  return {std::move(name), kText, static_cast<int64_t>(fnv1a(v))};
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::string format_real(double v) {
  char b[32];
  for (int digits = 6; digits <= 17; ++digits) {
    std::snprintf(b, sizeof b, "%.*g", digits, v);
    if (std::strtod(b, nullptr) == v) break;
  }
  return b;
}

namespace {

std::string shown(const HeaderField& f, int64_t v, const char* text_placeholder) {
  if (f.kind == HeaderField::kText) return text_placeholder;
  if (f.kind == HeaderField::kInt) return std::to_string(v);
  double d;
  std::memcpy(&d, &v, sizeof d);
  return format_real(d);
}

}  // namespace

void compare_headers(const std::vector<HeaderField>& fields, const int64_t* theirs, size_t n, int rank, int peer) {
  if (n != fields.size()) {
    throw PipelineError("handshake with stage " + std::to_string(peer) + " failed: its header has " + std::to_string(n) +
                        " fields, stage " + std::to_string(rank) + " expects " + std::to_string(fields.size()) +
                        " (another pmamba version?)");
  }
  for (size_t i = 0; i < n; ++i) {
    const HeaderField& f = fields[i];
    const int64_t a = f.value, b = theirs[i];
    if (a == b) continue;
    throw PipelineError("handshake with stage " + std::to_string(peer) + " failed: " + f.name + " differs (stage " +
                        std::to_string(rank) + " has " + shown(f, a, "one value") + ", stage " + std::to_string(peer) +
                        " has " + shown(f, b, "another value") + "); all stages must be started with the same options");
  }
}

void exchange_headers(Transport& tx, const std::vector<HeaderField>& fields, int tag_down, int tag_up) {
  const int64_t n = static_cast<int64_t>(fields.size());
  at::Tensor mine = at::empty({n}, at::kLong);  // (fields,)
  for (int64_t i = 0; i < n; ++i) mine[i] = fields[static_cast<size_t>(i)].value;
  auto compare = [&](const at::Tensor& theirs, int peer) {
    compare_headers(fields, theirs.data_ptr<int64_t>(), static_cast<size_t>(theirs.numel()), tx.rank(), peer);
  };
  const int rank = tx.rank(), world = tx.world();
  if (rank + 1 < world) tx.isend(mine, rank + 1, tag_down, "handshake");
  if (rank > 0) tx.isend(mine, rank - 1, tag_up, "handshake");
  if (rank > 0) {
    at::Tensor h = at::empty({n}, at::kLong);
    tx.recv(h, rank - 1, tag_down, "the handshake");
    compare(h, rank - 1);
  }
  if (rank + 1 < world) {
    at::Tensor h = at::empty({n}, at::kLong);
    tx.recv(h, rank + 1, tag_up, "the handshake");
    compare(h, rank + 1);
  }
  tx.wait_sends();
}

}  // namespace pmamba::pp
