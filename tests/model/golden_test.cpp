// Golden values from an independent implementation: tests/fixtures/*.h5 hold weights, input
// ids and logits produced by Hugging Face transformers' pure-PyTorch Mamba (see
// tests/fixtures/README.md for how they were made). The C++ model, loaded with the same
// weights, must reproduce those logits.
#include <c10/core/GradMode.h>
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>

#include "src/ckpt/tensor_file.h"
#include "src/model/fqn.h"
#include "src/model/mamba.h"
#include "tests/test_util.h"

namespace pmamba::model {
namespace {

void check_fixture(const std::string& file) {
  const std::string path = test::fixture(file);
  const MambaConfig c = config_from_json_string(ckpt::read_tensor_file_attr(path, "config"));
  MambaLM m(c, whole_model(c.n_layer));
  const auto stored = ckpt::list_tensor_file(path, "/weights");
  size_t used = 0;
  {
    c10::NoGradGuard no_grad;
    for (auto& item : m->named_parameters()) {
      const std::string src = item.key() == kLmHeadFqn ? kEmbeddingFqn : item.key();
      const at::Tensor w = ckpt::read_tensor_file(path, "/weights/" + src);
      ASSERT_EQ(w.sizes(), item.value().sizes()) << item.key();
      item.value().copy_(w);
      used += item.key() != kLmHeadFqn;
    }
  }
  EXPECT_EQ(used, stored.size()) << "fixture holds tensors the model does not have";
  const at::Tensor ids = ckpt::read_tensor_file(path, "/input_ids");
  const at::Tensor expect = ckpt::read_tensor_file(path, "/logits");
  c10::NoGradGuard no_grad;
  const at::Tensor got = m->forward(ids);
  ASSERT_EQ(got.sizes(), expect.sizes());
  const double diff = test::max_abs_diff(got, expect);
  EXPECT_LE(diff, 1e-5) << file;
  EXPECT_GT(expect.abs().max().item<double>(), 0.1);
  // Split into stages it must still agree (the split itself is bitwise; see the matrix test).
  std::cout << file << ": max |C++ - HF| = " << diff << "\n";
}

TEST(GoldenHf, TinyModelReproducesTransformersLogits) { check_fixture("hf_mamba_tiny.h5"); }

TEST(GoldenHf, SixteenStateModelReproducesTransformersLogits) {
  check_fixture("hf_mamba_tiny_n16.h5");
}

}  // namespace
}  // namespace pmamba::model
