// The boundary handshake: whatever header a peer sends (any length, any bits in integer, real
// and text fields), the comparison names a field or accepts, and never crashes.
#include <cstring>

#include "src/pp/handshake.h"
#include "tests/fuzz/fuzz_util.h"

using namespace pmamba;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using F = pp::HeaderField;
  const std::vector<F> fields = {F::integer("magic", 0x706d616d6261), F::integer("schema version", 2),
                                 F::integer("microbatch size", 4),     F::real("--lr", 1e-3),
                                 F::real("--beta2", 0.95),             F::text("partition", "2,2"),
                                 F::text("data options", "{}"),        F::integer("start step", 0)};
  std::vector<int64_t> theirs(size / 8);
  if (!theirs.empty()) std::memcpy(theirs.data(), data, theirs.size() * 8);
  fuzz::expect_clean("compare_headers", [&] { pp::compare_headers(fields, theirs.data(), theirs.size(), 0, 1); });
  return 0;
}
