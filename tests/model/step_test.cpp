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

// Prefill of a prompt, then steps: the prefill's logits are the forward's bit for bit, and each
// step continues from the state the prefill left (conv and SSM state, KV cache) as if the whole
// sequence had been stepped. Mamba-1, Mamba-2 and attention layers, whole and split.
TEST(Prefill, LeavesTheStateStepsContinueFrom) {
  MambaConfig m1 = preset("tiny");
  m1.d_conv = 3;
  MambaConfig hybrid = preset("tiny-hybrid");  // Mamba-2 + attention + MLP
  MambaConfig m2 = preset("tiny-hybrid");
  m2.attn_layer_idx.clear();
  m2.d_intermediate = 0;
  for (const MambaConfig& c : {m1, hybrid, m2}) {
    for (const int pieces : {1, 3}) {
      SCOPED_TRACE(describe(c) + " in " + std::to_string(pieces) + " stages");
      std::vector<MambaLM> stages;
      for (const auto& s : make_stages(c.n_layer, pieces, "")) {
        stages.emplace_back(c, s, BoundaryMode::kPacked);
        stages.back()->init_parameters(7);
      }
      at::manual_seed(3);
      // Prompts shorter and longer than d_conv, and longer than the first KV capacity (16).
      for (const int64_t prompt : {1, 2, 9, 21}) {
        SCOPED_TRACE("prompt " + std::to_string(prompt));
        const int64_t total = prompt + 6;
        const at::Tensor ids = at::randint(0, c.vocab_size, {2, total}, at::kLong);
        c10::NoGradGuard no_grad;
        at::Tensor full = ids, pre = ids.narrow(1, 0, prompt), pre_fwd = pre;
        std::vector<InferenceCache> caches(stages.size());
        for (size_t k = 0; k < stages.size(); ++k) {
          full = stages[k]->forward(full);
          pre_fwd = stages[k]->forward(pre_fwd);
          pre = stages[k]->prefill(pre, caches[k]);
        }
        EXPECT_TRUE(test::bitwise_equal(pre, pre_fwd));
        for (int64_t t = prompt; t < total; ++t) {
          at::Tensor x = ids.narrow(1, t, 1);
          for (size_t k = 0; k < stages.size(); ++k) x = stages[k]->step(x, caches[k]);
          EXPECT_LE(test::max_abs_diff(x, full.narrow(1, t, 1)), 1e-5) << "token " << t;
        }
        EXPECT_GT(full.abs().max().item<double>(), 0.01);
      }
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
