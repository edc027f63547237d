// Generation (src/gen): the sampler's processors against hand-computed cases, teacher-forced
// decoding against the full forward at PP 1 and PP 3, greedy tokens against transformers'
// generate() on the committed fixtures, and the determinism contract (same tokens at every PP
// degree and batch composition for a seed; other seeds, other tokens).
#include "src/gen/generate.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "src/ckpt/checkpoint.h"
#include "src/interop/convert.h"
#include "src/interop/safetensors.h"
#include "src/model/mamba.h"
#include "src/pp/errors.h"
#include "src/pp/state.h"
#include "tests/test_util.h"

namespace pmamba::gen {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

std::vector<double> scores_of(const at::Tensor& t) {
  const at::Tensor d = t.to(at::kDouble).contiguous();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

at::Tensor row(std::vector<float> v) { return at::tensor(v, at::kFloat); }

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegativeScoresOnce) {
  SamplingOptions o;
  o.repetition_penalty = 2.0;
  // ids 1 and 2 seen (1 twice: penalised once), 0 and 3 not.
  const auto s = scores_of(process_scores(row({1.0f, 4.0f, -3.0f, 5.0f}), {1, 2, 1}, o));
  EXPECT_EQ(s, (std::vector<double>{1.0, 2.0, -6.0, 5.0}));
}

TEST(Sampler, TopKKeepsTheKLargestAndTies) {
  SamplingOptions o;
  o.temperature = 1.0;
  o.top_k = 2;
  const auto s = scores_of(process_scores(row({0.5f, 3.0f, 1.0f, 1.0f, -2.0f}), {}, o));
  // The 2nd largest is 1.0, held by ids 2 and 3: both stay (transformers keeps ties too).
  EXPECT_EQ(s, (std::vector<double>{-kInf, 3.0, 1.0, 1.0, -kInf}));
}

TEST(Sampler, TopPDropsTheLeastLikelyTailUpToOneMinusP) {
  SamplingOptions o;
  o.temperature = 1.0;
  o.top_p = 0.7;
  // probabilities 0.1, 0.2, 0.3, 0.4 (log-scores): ascending cumulative 0.1, 0.3, 0.6, 1.0;
  // <= 0.3 goes (ids 0 and 1), the rest stays.
  const std::vector<float> logp = {std::log(0.1f), std::log(0.2f), std::log(0.3f), std::log(0.4f)};
  const auto s = scores_of(process_scores(row(logp), {}, o));
  EXPECT_EQ(s[0], -kInf);
  EXPECT_EQ(s[1], -kInf);
  EXPECT_NEAR(s[2], std::log(0.3), 1e-6);
  EXPECT_NEAR(s[3], std::log(0.4), 1e-6);
  o.top_p = 0.05;  // less than the top probability: only the top id stays
  const auto one = scores_of(process_scores(row(logp), {}, o));
  EXPECT_EQ(std::count(one.begin(), one.end(), -kInf), 3);
  EXPECT_NE(one[3], -kInf);
}

TEST(Sampler, MinPDropsIdsBelowAFractionOfTheTopProbability) {
  SamplingOptions o;
  o.temperature = 1.0;
  o.min_p = 0.4;  // top 0.4: the cut is 0.16, so 0.1 goes and 0.2 stays
  const std::vector<float> logp = {std::log(0.1f), std::log(0.2f), std::log(0.3f), std::log(0.4f)};
  const auto s = scores_of(process_scores(row(logp), {}, o));
  EXPECT_EQ(s[0], -kInf);
  for (int i = 1; i < 4; ++i) EXPECT_NE(s[static_cast<size_t>(i)], -kInf) << i;
}

TEST(Sampler, AppliesPenaltyThenTemperatureThenFilters) {
  SamplingOptions o;
  o.temperature = 0.5;
  o.repetition_penalty = 4.0;
  o.top_k = 1;
  // id 0 leads (8 vs 3) until the penalty divides it to 2, below 3: then top-k keeps id 1,
  // whose score the temperature has doubled to 6.
  const auto s = scores_of(process_scores(row({8.0f, 3.0f}), {0}, o));
  EXPECT_EQ(s, (std::vector<double>{-kInf, 6.0}));
}

TEST(Sampler, GreedyIsArgmaxAndSamplingFollowsItsSeed) {
  SamplingOptions greedy;
  RowRandom r(1, 0);
  EXPECT_EQ(choose_token(row({0.1f, 2.0f, 2.0f, -1.0f}), {}, greedy, r), 1);  // lowest id on a tie
  SamplingOptions o;
  o.temperature = 1.0;
  const at::Tensor flat = at::zeros({50}, at::kFloat);
  std::vector<int64_t> a, b, c;
  RowRandom ra(7, 3), rb(7, 3), rc(8, 3);
  for (int i = 0; i < 20; ++i) {
    a.push_back(choose_token(flat, {}, o, ra));
    b.push_back(choose_token(flat, {}, o, rb));
    c.push_back(choose_token(flat, {}, o, rc));
  }
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_GT(std::set<int64_t>(a.begin(), a.end()).size(), 10u);  // draws spread over the vocabulary
}

TEST(Sampler, RefusesOutOfRangeSettingsByName) {
  auto error = [](SamplingOptions o) {
    try {
      check_sampling(o);
    } catch (const pp::UsageError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  SamplingOptions o;
  o.top_p = 0;
  EXPECT_EQ(error(o), "--top-p must be in (0, 1] (1 = off), found 0");
  o = {};
  o.temperature = -1;
  EXPECT_EQ(error(o), "--temperature must be finite and >= 0 (0 = greedy), found -1");
  o = {};
  o.repetition_penalty = 0;
  EXPECT_EQ(error(o), "--repetition-penalty must be finite and > 0 (1 = off), found 0");
}

// ---- the loop ----

class Generate : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::temp_dir("gen"); }
  void TearDown() override { test::remove_tree(dir_); }
  std::string import(const std::string& folder) {
    interop::ImportOptions o;
    o.src = test::fixture("hf/" + folder);
    o.out = dir_ + "/" + folder;
    o.threads = 1;
    return interop::import_model(o).out_dir;
  }
  std::string prompts_file(const std::vector<std::string>& lines) {
    const std::string path = dir_ + "/prompts.txt";
    std::ofstream out(path);
    for (const auto& l : lines) out << l << "\n";
    return path;
  }
  std::string dir_;
};

at::Tensor expected(const std::string& folder, const std::string& name) {
  return interop::SafetensorsFile(test::fixture("hf/" + folder + "/expected.safetensors")).read(name);
}

std::vector<int64_t> ids_of(const at::Tensor& t) {
  const at::Tensor c = t.contiguous().view({-1});
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

std::string joined(const std::vector<int64_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

TEST_F(Generate, GreedyTokensEqualTransformersGenerate) {
  for (const char* folder : {"mamba", "mamba_untied", "mamba2", "bamba"}) {
    SCOPED_TRACE(folder);
    GenerateOptions o;
    o.ckpt = import(folder);
    o.prompt_tokens = joined(ids_of(expected(folder, "greedy_prompt")));
    const std::vector<int64_t> want = ids_of(expected(folder, "greedy_tokens"));
    o.max_new_tokens = static_cast<int64_t>(want.size());
    for (const int pp : {1, 2}) {
      o.pp = pp;
      const GenerateResult r = generate(o);
      ASSERT_EQ(r.rows.size(), 1u);
      EXPECT_EQ(r.rows[0].tokens, want) << "pp " << pp;
      EXPECT_EQ(r.rows[0].stop, "max_new_tokens");
    }
  }
}

// Teacher forcing: the step logits before each forced token equal the full forward's logits at
// that position, for every row of a batch of unequal prompts, at PP 1 and PP 3.
TEST_F(Generate, TeacherForcedStepsMatchTheFullForward) {
  for (const char* preset : {"tiny", "tiny-hybrid"}) {
    const model::MambaConfig c = model::preset(preset);
    at::manual_seed(11);
    // Pure Mamba decodes prompts of unequal length in one batch; with attention they must be equal.
    const std::vector<int64_t> lengths = std::string(preset) == "tiny" ? std::vector<int64_t>{3, 7, 1} : std::vector<int64_t>{5, 5};
    const int64_t n_new = 6;
    std::vector<std::string> lines;
    std::vector<at::Tensor> sequences;
    GenerateOptions o;
    o.preset = preset;
    o.init_seed = 5;
    for (int64_t len : lengths) {
      const at::Tensor seq = at::randint(0, c.vocab_size, {1, len + n_new}, at::kLong);
      sequences.push_back(seq);
      lines.push_back(joined(ids_of(seq.narrow(1, 0, len))));
      o.forced.push_back(ids_of(seq.narrow(1, len, n_new)));
    }
    o.prompt_file = prompts_file(lines);
    o.max_new_tokens = n_new;
    o.keep_logits = true;
    model::MambaLM whole(c, model::whole_model(c.n_layer));
    whole->init_parameters(5);
    for (const int pp : {1, 3}) {
      SCOPED_TRACE(std::string(preset) + " pp " + std::to_string(pp));
      o.pp = pp;
      const GenerateResult r = generate(o);
      ASSERT_EQ(r.rows.size(), lengths.size());
      for (size_t i = 0; i < lengths.size(); ++i) {
        c10::NoGradGuard no_grad;
        const at::Tensor full = whole->forward(sequences[i]);  // (1, L, V)
        ASSERT_EQ(r.rows[i].logits.size(), static_cast<size_t>(n_new));
        EXPECT_EQ(r.rows[i].tokens, o.forced[i]);
        for (int64_t t = 0; t < n_new; ++t) {
          const at::Tensor want = full[0][lengths[i] - 1 + t];
          EXPECT_LE(test::max_abs_diff(r.rows[i].logits[static_cast<size_t>(t)], want), 1e-5) << "row " << i << " token " << t;
        }
      }
    }
  }
}

TEST_F(Generate, SamplingGivesTheSameTokensAtEveryPipelineDegreeAndOthersForOtherSeeds) {
  GenerateOptions o;
  o.ckpt = import("mamba2");
  o.prompt_file = prompts_file({"5,10,57,50", "1,2", "9,9,9,9,9,9"});
  o.max_new_tokens = 12;
  o.sampling.temperature = 0.8;
  o.sampling.top_p = 0.9;
  o.sampling.top_k = 40;
  o.sampling.seed = 1;
  o.batch = 3;
  std::vector<std::vector<int64_t>> first;
  for (const int pp : {1, 2}) {
    o.pp = pp;
    const GenerateResult r = generate(o);
    std::vector<std::vector<int64_t>> tokens;
    for (const auto& row : r.rows) tokens.push_back(row.tokens);
    if (first.empty()) {
      first = tokens;
    } else {
      EXPECT_EQ(tokens, first) << "pp " << pp;
    }
  }
  o.pp = 1;
  o.sampling.seed = 2;
  const GenerateResult other = generate(o);
  int differ = 0;
  for (size_t i = 0; i < first.size(); ++i) differ += other.rows[i].tokens != first[i];
  EXPECT_GE(differ, 2);
}

TEST_F(Generate, StopsAtAStopTokenOrTheLimit) {
  GenerateOptions o;
  o.ckpt = import("mamba");
  o.prompt_tokens = "46,28,31,25";  // greedy: 41 26 17 20 45 ...
  o.max_new_tokens = 10;
  o.stop_tokens = {17};
  GenerateResult r = generate(o);
  EXPECT_EQ(r.rows[0].tokens, (std::vector<int64_t>{41, 26, 17}));
  EXPECT_EQ(r.rows[0].stop, "stop_token");
  o.stop_tokens.clear();
  o.max_new_tokens = 2;
  r = generate(o);
  EXPECT_EQ(r.rows[0].tokens, (std::vector<int64_t>{41, 26}));
  EXPECT_EQ(r.rows[0].stop, "max_new_tokens");
}

TEST_F(Generate, RefusesBadPromptsNamingTheLine) {
  GenerateOptions o;
  o.preset = "tiny";
  auto error = [&] {
    try {
      generate(o);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  o.prompt_file = prompts_file({"1,2", "3,x", "4"});
  EXPECT_NE(error().find("prompts.txt line 2: token 'x' is not an id in [0, "), std::string::npos) << error();
  o.prompt_file.clear();
  o.prompt_tokens = "1,99999";
  EXPECT_NE(error().find("--prompt-tokens: token '99999' is not an id"), std::string::npos) << error();
  o.prompt_tokens.clear();
  o.prompt_text = "hi";
  EXPECT_NE(error().find("needs a byte-vocabulary model (vocab_size >= 256)"), std::string::npos) << error();
  o.prompt_text.clear();
  EXPECT_EQ(error(), "give exactly one of --prompt-tokens, --prompt-file or --prompt");
}

}  // namespace
}  // namespace pmamba::gen
