// Data and token files (training data, pmamba-eval's --tokens-file): any file content gives
// samples or a UsageError, never a crash, a read out of bounds or an unbounded allocation.
#include <ATen/ATen.h>

#include "src/pp/data.h"
#include "src/pp/eval.h"
#include "tests/fuzz/fuzz_util.h"

using namespace pmamba;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  const int mode = in.byte() % 3;
  pp::DataOptions o;
  o.seq_len = static_cast<int64_t>(in.below(40));
  o.seed = in.u64();
  const int64_t first = static_cast<int64_t>(in.below(int64_t{1} << 50));
  const std::string path = fuzz::scratch("data") + "/file";
  fuzz::write_bytes(path, in.rest());
  if (mode == 0 || mode == 1) {
    o.source = (mode == 0 ? "text:" : "tokens:") + path;
    fuzz::expect_clean("make_data", [&] {
      const auto source = pp::make_data(o);
      const pp::Batch b = source->batch(first, 2);
      // Targets and inputs are tokens the source said it has.
      if (b.inputs.max().item<int64_t>() >= source->vocab_needed() || b.inputs.min().item<int64_t>() < 0) std::abort();
    });
  } else {
    fuzz::expect_clean("read_tokens_file", [&] { pp::read_tokens_file(path); });
  }
  return 0;
}
