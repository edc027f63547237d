// The global-heap checker of version-1 shards: it reads untrusted bytes (the file's metadata)
// itself, before HDF5 does, so it must never read out of bounds or loop, whatever the bytes.
#include <cstring>

#include "src/ckpt/heap_check.h"
#include "tests/fuzz/fuzz_util.h"

using namespace pmamba;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_clean("check_heap_collection", [&] { ckpt::check_heap_collection(data, size, "fuzz"); });
  // The same bytes as a whole file, with a few raw-data extents carved out of it.
  fuzz::Input in(data, std::min<size_t>(size, 32));
  std::vector<ckpt::Extent> skip;
  for (int i = 0, n = in.byte() % 4; i < n; ++i) {
    const int64_t b = static_cast<int64_t>(in.below(size + 1));
    skip.push_back({b, b + static_cast<int64_t>(in.below(size + 1))});
  }
  auto read = [&](int64_t off, uint8_t* dest, size_t n) -> size_t {
    if (off < 0 || static_cast<size_t>(off) >= size) return 0;
    const size_t k = std::min(n, size - static_cast<size_t>(off));
    std::memcpy(dest, data + off, k);
    return k;
  };
  fuzz::expect_clean("check_heaps_in", [&] { ckpt::check_heaps_in(read, static_cast<int64_t>(size), skip, "fuzz"); });
  return 0;
}
