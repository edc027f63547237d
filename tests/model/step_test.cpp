#include <c10/core/GradMode.h>
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "src/model/mamba.h"
#include "tests/test_util.h"

namespace pmamba::model {
namespace {

at::Tensor step_through(std::vector<MambaLM>& stages, const at::Tensor& ids) {
  std::vector<InferenceCache> caches;
  for (auto& s : stages) caches.push_back(s->make_cache(ids.size(0)));
  std::vector<at::Tensor> outs;
  c10::NoGradGuard no_grad;
  for (int64_t t = 0; t < ids.size(1); ++t) {
    at::Tensor x = ids.narrow(1, t, 1);  // (B, 1)
    for (size_t k = 0; k < stages.size(); ++k) x = stages[k]->step(x, caches[k]);
    outs.push_back(x);  // (B, 1, V)
  }
  return at::cat(outs, 1);
}

TEST(RecurrentStep, OneTokenAtATimeReproducesFullSequenceLogits) {
  for (const bool fp32_residual : {true, false}) {
    MambaConfig c = preset("tiny");
    c.residual_in_fp32 = fp32_residual;
    c.d_conv = 3;
    for (const std::string layout : {"4", "1,3", "0,2,2,0"}) {
      SCOPED_TRACE(layout);
      std::vector<MambaLM> stages;
      for (const auto& s : make_stages(c.n_layer, 0, layout)) {
        stages.emplace_back(c, s, BoundaryMode::kSummed);
        stages.back()->init_parameters(42);
      }
      at::manual_seed(1);
      const at::Tensor ids = at::randint(0, c.vocab_size, {3, 11}, at::kLong);
      at::Tensor full;
      {
        c10::NoGradGuard no_grad;
        full = ids;
        for (auto& s : stages) full = s->forward(full);
      }
      const at::Tensor stepped = step_through(stages, ids);
      ASSERT_EQ(stepped.sizes(), full.sizes());
      EXPECT_LE(test::max_abs_diff(stepped, full), 1e-5);
      EXPECT_GT(full.abs().max().item<double>(), 0.01);  // not trivially zero
    }
  }
}

TEST(RecurrentStep, RejectsMoreThanOneToken) {
  const MambaConfig c = preset("tiny");
  MambaLM m(c, whole_model(c.n_layer));
  auto cache = m->make_cache(1);
  EXPECT_THROW(m->step(at::zeros({1, 2}, at::kLong), cache), c10::Error);
}

}  // namespace
}  // namespace pmamba::model
