// Megatron-LM indexed datasets (PREFIX.idx + PREFIX.bin, `--data PREFIX` or a mixture
// P1=W1,P2=W2): whatever the two files hold, opening them and drawing training and evaluation
// windows gives tokens the source said it has, or a UsageError; never a crash, a read outside
// the mapped .bin or an allocation the files cannot justify.
//
// Raw bytes would almost never get past the magic and the size equation, so most inputs build
// the index from fields the fuzzer picks (counts, lengths, pointers, document entries, dtype,
// version) and then, on request, damage it: one byte flipped, bytes cut off the end, a .bin of
// the wrong size. Mode 3 takes the files as raw bytes.
#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "src/pp/corpus.h"
#include "src/pp/data.h"
#include "tests/fuzz/fuzz_util.h"

using namespace pmamba;

namespace {

void put_le(std::string& s, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// One dataset's two files, from the fuzzer's choices.
void make_dataset(fuzz::Input& in, const std::string& prefix) {
  std::string idx, bin;
  const uint8_t mode = in.byte() % 4;
  if (mode == 3) {
    idx = in.text(size_t{1} << 15);
    bin = in.text(size_t{1} << 15);
  } else {
    const std::vector<uint8_t> codes = {1, 4, 8, 1, 4, 8, 2, 0, 255};
    const uint8_t code = in.pick(codes);
    const int item = code == 1 ? 1 : code == 4 ? 4 : 2;
    const uint64_t sequences = in.below(24);
    std::vector<int64_t> len(sequences);
    for (auto& l : len) l = in.flip() && in.flip() && in.flip() ? -static_cast<int64_t>(in.below(5)) - 1 : static_cast<int64_t>(in.below(60));
    // Document entries: 0, then ascending sequence indices, ending at the sequence count.
    std::vector<uint64_t> docs = {0};
    for (uint64_t s = 1; s <= sequences; ++s) {
      if (s == sequences || in.flip()) docs.push_back(s);
    }
    idx.append("MMIDIDX\0\0", 9);
    put_le(idx, in.flip() && in.flip() && in.flip() ? in.below(4) : 1, 8);  // version
    idx.push_back(static_cast<char>(code));
    put_le(idx, sequences, 8);
    put_le(idx, docs.size(), 8);
    for (int64_t l : len) put_le(idx, static_cast<uint64_t>(l), 4);
    int64_t at = 0;
    for (int64_t l : len) {
      put_le(idx, static_cast<uint64_t>(at), 8);
      at += l * item;
    }
    for (uint64_t d : docs) put_le(idx, d, 8);
    if (mode == 1 && !idx.empty()) {  // one byte damaged
      const size_t where = in.below(idx.size());
      idx[where] = static_cast<char>(idx[where] ^ (in.byte() | 1));
    }
    if (mode == 2) idx.resize(idx.size() - std::min<size_t>(idx.size(), in.below(20)));  // truncated
    // Tokens: the bytes the index describes (when it is consistent), give or take a few.
    const int64_t want = at > 0 ? at : 0;
    int64_t bytes = want;
    if (in.flip() && in.flip()) bytes += static_cast<int64_t>(in.below(9)) - 4;
    for (int64_t i = 0; i < std::max<int64_t>(bytes, 0); ++i) {
      const uint8_t v = in.byte();
      bin.push_back(static_cast<char>(in.flip() ? v % 40 : v));  // small ids, or any
    }
  }
  fuzz::write_bytes(prefix + ".idx", idx);
  if (!(in.flip() && in.flip() && in.flip())) fuzz::write_bytes(prefix + ".bin", bin);  // or no .bin at all
}

void check_batch(const pp::Batch& b, int64_t vocab) {
  // Every token is one the source said it has.
  for (const at::Tensor& t : {b.inputs, b.targets}) {
    if (t.numel() == 0) continue;
    if (t.max().item<int64_t>() >= vocab || t.min().item<int64_t>() < 0) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  const std::string dir = fuzz::scratch("corpus");
  pp::DataOptions o;
  o.seq_len = static_cast<int64_t>(in.below(12));  // 0: the default, 128
  o.seed = in.u64();
  o.eod_token = in.flip() ? static_cast<int64_t>(in.below(300)) : -1;
  const std::vector<double> fractions = {0, 0, 0.1, 0.5, 0.9, 0.999};
  o.eval_fraction = in.pick(fractions);
  const int64_t first = static_cast<int64_t>(in.below(int64_t{1} << 50));
  const size_t parts = 1 + in.below(3);
  const std::vector<std::string> weights = {"1", "0.3", "2.5", "1e-300", "1e300", "1e308", "4.9e-324"};
  std::string spec;
  for (size_t k = 0; k < parts; ++k) {
    const std::string prefix = dir + "/d" + std::to_string(k);
    make_dataset(in, prefix);
    spec += (k ? "," : "") + prefix + (parts > 1 ? "=" + in.pick(weights) : std::string());
  }
  o.source = "indexed:" + spec;

  fuzz::expect_clean("IndexedDataset", [&] {
    const pp::IndexedDataset ds(dir + "/d0");
    // Every document reads back within the tokens the index counts, below the largest id.
    std::vector<int64_t> tokens;
    int64_t total = 0;
    for (int64_t d = 0; d < ds.documents(); ++d) {
      const int64_t n = ds.document_length(d);
      if (n < 0) std::abort();
      tokens.resize(static_cast<size_t>(n));
      ds.copy(d, 0, n, tokens.data());
      for (int64_t t : tokens) {
        if (t < 0 || t > ds.max_token()) std::abort();
      }
      total += n;
    }
    if (total != ds.tokens()) std::abort();
    (void)ds.content().dump();
  });
  fuzz::expect_clean("make_data(indexed)", [&] {
    const auto source = pp::make_data(o);
    (void)source->describe();
    (void)source->content().dump();
    check_batch(source->batch(first, 2), source->vocab_needed());
    check_batch(source->batch(first % 7, 3), source->vocab_needed());
    const int64_t n = source->eval_size();
    if (n > 0) check_batch(source->eval_batch(first % (n + 2), 2), source->vocab_needed());
  });
  return 0;
}
