// Any bytes as a safetensors file and as a model.safetensors.index.json (src/interop): either
// refused with a SafetensorsError, or accepted, every tensor read, and what was accepted written
// back by pmamba's writer and read again unchanged (names, dtypes, shapes, offsets, metadata,
// bytes; the index's entries). Any other exception is a finding too, even another ckpt::Error:
// the reader promises SafetensorsError for every bad input, and a file the reader accepts that
// the writer refuses (SafetensorsWriteError) would be a disagreement between the two.
#include <ATen/ATen.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "src/interop/errors.h"
#include "src/interop/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

using namespace pmamba;
using namespace pmamba::interop;

namespace {

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "finding: %s\n", what.c_str());
  std::abort();
}

template <typename Fn>
void expect_only_safetensors_errors(const char* what, Fn&& fn) {
  try {
    fn();
  } catch (const SafetensorsError&) {
  } catch (const std::exception& e) {
    finding(std::string(what) + " let an exception other than SafetensorsError escape: " + e.what());
  }
}

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() && a.nbytes() == b.nbytes() &&
         (a.nbytes() == 0 || std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0);
}

void check_file(const std::string& in, const std::string& out) {
  const SafetensorsFile f(in);
  std::vector<at::Tensor> tensors;
  std::vector<TensorSpec> specs;
  for (const TensorInfo& t : f.tensors()) {
    at::Tensor x = f.read(t.name);
    if (x.scalar_type() != t.scalar_type || x.sizes() != at::IntArrayRef(t.shape) ||
        static_cast<uint64_t>(x.nbytes()) != t.end - t.begin) {
      finding("tensor '" + t.name + "' read back with another dtype, shape or size than its entry");
    }
    specs.push_back({t.name, t.scalar_type, t.shape});
    tensors.push_back(std::move(x));
  }
  write_safetensors(out, specs, [&](size_t i) { return tensors[i]; }, f.metadata());
  const SafetensorsFile g(out);
  if (g.metadata() != f.metadata()) finding("the metadata changed in a round trip");
  if (g.tensors().size() != f.tensors().size()) finding("the tensor count changed in a round trip");
  for (size_t i = 0; i < f.tensors().size(); ++i) {
    const TensorInfo &a = f.tensors()[i], &b = g.tensors()[i];
    // The accepted ranges tile the data section in order, so spec order reproduces the offsets.
    if (a.name != b.name || a.dtype != b.dtype || a.shape != b.shape || a.begin != b.begin || a.end != b.end) {
      finding("tensor '" + a.name + "' changed its entry in a round trip");
    }
    if (!same_bytes(g.read(b.name), tensors[i])) finding("tensor '" + a.name + "' changed its bytes in a round trip");
  }
}

void check_index(const std::string& in, const std::string& out) {
  const SafetensorsIndex index = read_safetensors_index(in);
  write_safetensors_index(out, index);
  const SafetensorsIndex back = read_safetensors_index(out);
  if (back.total_size != index.total_size || back.weight_map != index.weight_map) {
    finding("an index changed in a round trip");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = fuzz::scratch("safetensors");
  const std::string in = dir + "/in", out = dir + "/out.safetensors", out_index = dir + "/out.index.json";
  fuzz::write_bytes(in, std::string(reinterpret_cast<const char*>(data), size));
  expect_only_safetensors_errors("SafetensorsFile", [&] { check_file(in, out); });
  expect_only_safetensors_errors("read_safetensors_index", [&] { check_index(in, out_index); });
  return 0;
}
