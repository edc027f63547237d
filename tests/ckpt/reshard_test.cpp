// Offline reshard, verify and diff.
#include <c10/core/GradMode.h>
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>

#include "src/ckpt/diff.h"
#include "src/ckpt/errors.h"
#include "src/ckpt/h5.h"
#include "src/ckpt/reshard.h"
#include "src/ckpt/verify.h"
#include "tests/ckpt/ckpt_test_util.h"
#include "tests/test_util.h"

namespace pmamba::ckpt {
namespace {

class Reshard : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::temp_dir("reshard"); }
  void TearDown() override { test::remove_tree(dir_); }
  std::string reshard_to(const std::string& in, const std::string& out, int pp, const std::string& partition,
                         const std::string& compression = "keep") {
    ReshardOptions o;
    o.in = in;
    o.out = dir_ + "/" + out;
    o.pp = pp;
    o.partition = partition;
    o.compression = compression;
    return reshard(o).out_dir;
  }
  std::string dir_;
};

std::vector<std::string> layouts_for(int64_t n_layer, int pp) {
  std::vector<std::string> out = {""};  // balanced
  if (pp >= 2 && pp - 1 <= n_layer) {
    auto counts = model::balanced_partition(n_layer, pp - 1);
    std::string s = "0";
    for (auto c : counts) s += "," + std::to_string(c);
    out.push_back(s);  // embedding-only first stage
  }
  return out;
}

model::MambaConfig with(int64_t n_layer, bool tie) {
  model::MambaConfig c = model::preset("tiny");
  c.n_layer = n_layer;
  c.tie_embeddings = tie;
  return c;
}

TEST_F(Reshard, EveryDegreeToEveryDegreeVerifiesAndDiffsEqual) {
  for (const auto& c : {with(4, true), with(1, true), with(3, false)}) {
    for (int a = 1; a <= std::min<int64_t>(4, c.n_layer + 1); ++a) {
      const std::string in = dir_ + "/in-" + std::to_string(c.n_layer) + std::to_string(c.tie_embeddings) + "-" + std::to_string(a);
      const auto in_layout = model::partition_string(model::make_stages(c.n_layer, a, ""));
      test::save_trained(in, in_layout, a % 2 ? "zstd" : "none", c);
      for (int b = 1; b <= std::min<int64_t>(4, c.n_layer + 1); ++b) {
        for (const auto& part : layouts_for(c.n_layer, b)) {
          SCOPED_TRACE("n_layer " + std::to_string(c.n_layer) + " tie " + std::to_string(c.tie_embeddings) + ": " +
                       std::to_string(a) + " -> " + std::to_string(b) + " [" + part + "]");
          const std::string out = reshard_to(in, "out", b, part, b % 2 ? "keep" : "zstd:5");
          const VerifyReport v = verify_checkpoint(out, {});
          EXPECT_TRUE(v.ok()) << (v.problems.empty() ? "" : v.problems.front());
          const DiffReport d = diff_checkpoints(in, out, {});
          EXPECT_TRUE(d.equal());
          EXPECT_EQ(d.equal_by_digest, static_cast<int64_t>(d.tensors.size()));
          EXPECT_EQ(CheckpointReader(out).manifest().stages.size(), static_cast<size_t>(b));
          fs::remove_tree(dir_ + "/out");
        }
      }
    }
  }
}

TEST_F(Reshard, ChainReturnsByteIdenticalTensors) {
  const auto c = with(5, true);
  const std::string start = test::save_trained(dir_ + "/p1", "5", "zstd", c);
  const std::string p4 = reshard_to(start, "p4", 4, "0,2,3,0");
  const std::string p3 = reshard_to(p4, "p3", 3, "");
  const std::string p2 = reshard_to(p3, "p2", 2, "4,1");
  const std::string p1 = reshard_to(p2, "p1b", 1, "");
  const auto a = test::load_everything(start), b = test::load_everything(p1);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [k, t] : a) EXPECT_TRUE(test::bitwise_equal(t, b.at(k))) << k;
  EXPECT_GT(a.size(), 40u);
}

TEST_F(Reshard, FilesPerStageSpreadEachStageAndComeBackByteIdentical) {
  for (bool tie : {true, false}) {
    const auto c = with(3, tie);
    const std::string start = test::save_trained(dir_ + "/s" + std::to_string(tie), "1,2", "zstd", c);
    ReshardOptions o;
    o.in = start;
    o.out = dir_ + "/k3-" + std::to_string(tie);
    o.pp = 2;
    o.files_per_stage = 3;
    const std::string k3 = reshard(o).out_dir;
    const Manifest m = CheckpointReader(k3).manifest();
    EXPECT_EQ(m.format_version, kFormatVersion);
    for (const auto& st : m.stages) {
      ASSERT_EQ(st.files.size(), 3u);
      for (int k = 0; k < 3; ++k) EXPECT_EQ(st.files[static_cast<size_t>(k)].file, shard_file_name(st.stage, 2, k, 3));
    }
    // Every file holds something (balanced by bytes), each FQN one file of its stage.
    std::map<std::string, int> per_file;
    for (const auto& t : m.tensors) per_file[t.file] += 1;
    EXPECT_EQ(per_file.size(), 6u);
    EXPECT_TRUE(verify_checkpoint(k3, {}).ok());
    EXPECT_TRUE(diff_checkpoints(start, k3, {}).equal());
    // ... and back to one file per stage at another degree: the same bytes.
    o.in = k3;
    o.out = dir_ + "/back-" + std::to_string(tie);
    o.pp = 3;
    o.files_per_stage = 1;
    const std::string back = reshard(o).out_dir;
    const auto a = test::load_everything(start), b = test::load_everything(back);
    ASSERT_EQ(a.size(), b.size());
    for (const auto& [key, t] : a) EXPECT_TRUE(test::bitwise_equal(t, b.at(key))) << key;
  }
}

TEST_F(Reshard, RejectsAMissingOrMisplacedPartFile) {
  const std::string in = test::save_trained(dir_ + "/in", "2,2", "none", with(4, true));
  ReshardOptions o;
  o.in = in;
  o.out = dir_ + "/k2";
  o.pp = 2;
  o.files_per_stage = 2;
  const std::string k2 = reshard(o).out_dir;
  {
    // A part renamed away: the reader names the missing file.
    const std::string gone = k2 + "/" + shard_file_name(1, 2, 1, 2);
    fs::rename_path(gone, gone + ".moved");
    PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(k2), FormatError, "missing shard 'stage-01-of-02.part-1-of-2.h5'");
    fs::rename_path(gone + ".moved", gone);
  }
  // Two parts swapped under each other's names: their headers say which part they are.
  const std::string p0 = k2 + "/" + shard_file_name(0, 2, 0, 2), p1 = k2 + "/" + shard_file_name(0, 2, 1, 2);
  fs::rename_path(p0, p0 + ".x");
  fs::rename_path(p1, p0);
  fs::rename_path(p0 + ".x", p1);
  EXPECT_THROW(CheckpointReader r(k2), FormatError);
  EXPECT_FALSE(verify_checkpoint(k2, {}).ok());
  o.files_per_stage = 0;
  o.out = dir_ + "/zero";
  PMAMBA_EXPECT_THROW_WITH(reshard(o), UsageError, "--files-per-stage must be in [1, 4096]");
}

TEST_F(Reshard, RecompressionKeepsDigests) {
  const auto c = with(2, true);
  const std::string z = test::save_trained(dir_ + "/z", "1,1", "zstd:3", c);
  const std::string n = reshard_to(z, "n", 3, "0,1,1", "none");
  const std::string z2 = reshard_to(n, "z2", 2, "", "zstd:9");
  const Manifest mz = CheckpointReader(z).manifest(), mn = CheckpointReader(n).manifest(),
                 mz2 = CheckpointReader(z2).manifest();
  EXPECT_EQ(mn.compression.str(), "none");
  EXPECT_EQ(mz2.compression.str(), "zstd:9");
  for (const auto& t : mz.tensors) {
    for (const auto& [slot, e] : t.slots) {
      EXPECT_EQ(mn.find(t.fqn)->slots.at(slot).digest, e.digest) << t.fqn;
      EXPECT_EQ(mz2.find(t.fqn)->slots.at(slot).digest, e.digest) << t.fqn;
    }
  }
  EXPECT_LT(mz.total_stored_bytes(), mn.total_stored_bytes());
}

TEST_F(Reshard, ImpossibleLayoutIsRefusedBeforeWriting) {
  const std::string in = test::save_tiny(dir_ + "/in", 0, "2,2");
  PMAMBA_EXPECT_THROW_WITH(reshard_to(in, "x", 6, ""), UsageError, "more than allowed");
  PMAMBA_EXPECT_THROW_WITH(reshard_to(in, "x", 2, "3,3"), UsageError, "sums to 6 layers");
  EXPECT_FALSE(fs::exists(dir_ + "/x"));
}

TEST_F(Reshard, RefusesExistingOutputUnlessForcedAndNeverTouchesInput) {
  const std::string in = test::save_tiny(dir_ + "/in", 0, "2,2");
  reshard_to(in, "out", 1, "");
  PMAMBA_EXPECT_THROW_WITH(reshard_to(in, "out", 3, ""), UsageError, "already exists");
  ReshardOptions o;
  o.in = in;
  o.out = dir_ + "/out";
  o.pp = 3;
  o.force = true;
  EXPECT_EQ(CheckpointReader(reshard(o).out_dir).manifest().stages.size(), 3u);
  o.out = dir_ + "/in";
  PMAMBA_EXPECT_THROW_WITH(reshard(o), UsageError, "contains the input checkpoint");
  EXPECT_TRUE(verify_checkpoint(in, {}).ok());
}

TEST_F(Reshard, CorruptInputFailsAndCommitsNothing) {
  const std::string in = test::save_tiny(dir_ + "/in", 0, "2,2", "none");
  const std::string shard = in + "/stage-01-of-02.h5";
  test::flip_byte(shard, test::dataset_file_offset(shard, "/model/backbone/layers/3/mixer/in_proj/weight") + 17);
  ReshardOptions o;
  o.in = dir_ + "/in";
  o.out = dir_ + "/out";
  o.pp = 1;
  o.compression = "zstd";  // re-encoding reads (and checks) every tensor
  PMAMBA_EXPECT_THROW_WITH(reshard(o), IntegrityError, "backbone.layers.3.mixer.in_proj.weight");
  EXPECT_FALSE(fs::exists(dir_ + "/out"));
  o.compression = "keep";
  o.verify = true;  // copying as stored, --verify still reads every input tensor
  PMAMBA_EXPECT_THROW_WITH(reshard(o), IntegrityError, "backbone.layers.3.mixer.in_proj.weight");
  EXPECT_FALSE(fs::exists(dir_ + "/out"));
}

// ---- verify ----

class Verify : public Reshard {
 protected:
  void SetUp() override {
    Reshard::SetUp();
    step_ = test::save_trained(dir_ + "/c", "1,2,1", "zstd", with(4, true));
  }
  std::string problems(const VerifyReport& r) {
    std::string s;
    for (const auto& p : r.problems) s += p + "\n";
    return s;
  }
  std::string step_;
};

TEST_F(Verify, CleanCheckpointPasses) {
  const VerifyReport r = verify_checkpoint(dir_ + "/c", {true, 2});
  EXPECT_TRUE(r.ok()) << problems(r);
  EXPECT_EQ(r.datasets, 42 * 4);
}

TEST_F(Verify, CatchesAFlippedBitInsideACompressedChunk) {
  const std::string shard = step_ + "/stage-01-of-03.h5";
  const auto [offset, size] = test::dataset_file_extent(shard, "/optim/backbone/layers/2/mixer/x_proj/weight/exp_avg");
  ASSERT_GT(size, 200);
  test::flip_byte(shard, offset + size / 2);
  const VerifyReport r = verify_checkpoint(dir_ + "/c", {});
  ASSERT_EQ(r.problems.size(), 1u) << problems(r);
  EXPECT_NE(r.problems[0].find("'backbone.layers.2.mixer.x_proj.weight' (exp_avg) in 'stage-01-of-03.h5'"),
            std::string::npos)
      << r.problems[0];
}

TEST_F(Verify, CatchesAMissingShard) {
  fs::remove_file(step_ + "/stage-02-of-03.h5");
  const VerifyReport r = verify_checkpoint(dir_ + "/c", {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(problems(r).find("missing shard 'stage-02-of-03.h5'"), std::string::npos) << problems(r);
}

TEST_F(Verify, CatchesAnUnknownExtraDataset) {
  const std::string shard = step_ + "/stage-00-of-03.h5";
  {
    h5::Silence quiet;
    h5::Handle f = h5::open_file_rw(shard);
    hsize_t dims[1] = {4};
    h5::Handle space(H5Screate_simple(1, dims, nullptr));
    h5::Handle lcpl(H5Pcreate(H5P_LINK_CREATE));
    H5Pset_create_intermediate_group(lcpl.get(), 1);
    const float v[4] = {1, 2, 3, 4};
    h5::Handle ds(H5Dcreate2(f.get(), "/model/backbone/extra/weight", H5T_IEEE_F32LE, space.get(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT));
    H5Dwrite(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
    h5::write_attr(ds.get(), "dtype", std::string("float32"));
    h5::write_attr(ds.get(), "xxh3_64", digest_hex(bytes_digest(v, sizeof v)));
  }
  const VerifyReport r = verify_checkpoint(dir_ + "/c", {});
  EXPECT_NE(problems(r).find("stage-00-of-03.h5' holds 'backbone.extra.weight' (param) which the manifest places elsewhere or not at all"),
            std::string::npos)
      << problems(r);
}

TEST_F(Verify, CatchesTiedCopiesThatDiffer) {
  const std::string m = step_ + "/manifest.json";
  std::string text = fs::read_file(m);
  const size_t p = text.find("\"alias_of\":\"backbone.embedding.weight\",\"xxh3_64\":{\"param\":\"");
  ASSERT_NE(p, std::string::npos);
  const size_t d = text.find("\"param\":\"", p) + 9;
  text[d] = text[d] == '0' ? '1' : '0';
  test::write_text(m, text);
  const VerifyReport r = verify_checkpoint(dir_ + "/c", {});
  EXPECT_NE(problems(r).find("tied copies differ: 'lm_head.weight' (param, stage 2)"), std::string::npos) << problems(r);
}

TEST_F(Verify, CatchesShapeThatDisagreesWithConfig) {
  const std::string m = step_ + "/manifest.json";
  test::write_text(m, test::replace_all(fs::read_file(m), "\"expand\":2", "\"expand\":3"));
  const VerifyReport r = verify_checkpoint(dir_ + "/c", {});
  EXPECT_NE(problems(r).find("'backbone.layers.0.mixer.in_proj.weight' has shape [128, 32] but the config expects [192, 32]"),
            std::string::npos)
      << problems(r);
}

TEST_F(Verify, FiniteFlagReportsNaN) {
  const auto c = with(2, true);
  const auto stages = model::make_stages(2, 1, "");
  save_checkpoint(dir_ + "/nan", 1, c, stages, pp::initial_train_state(1, 1), {}, [&](const model::StageSpec& s) {
    model::MambaLM m(c, s);
    m->init_parameters(1);
    c10::NoGradGuard g;
    m->backbone->layers->at<model::BlockImpl>("1").mixer->D[3] = std::numeric_limits<float>::quiet_NaN();
    return pp::collect_stage(*m, nullptr);
  });
  EXPECT_TRUE(verify_checkpoint(dir_ + "/nan", {false, 0}).ok());
  const VerifyReport r = verify_checkpoint(dir_ + "/nan", {true, 0});
  EXPECT_NE(problems(r).find("'backbone.layers.1.mixer.D' (param) in 'stage-00-of-01.h5' holds 1 NaN/Inf values"),
            std::string::npos)
      << problems(r);
}

// ---- diff ----

TEST_F(Reshard, DiffNamesTheFqnAndIndexOfOneFlippedBit) {
  const auto c = with(3, true);
  const std::string a = test::save_trained(dir_ + "/a", "3", "none", c);
  const auto stages = model::make_stages(3, 2, "1,2");
  // b: the same state written at another layout, with one bit of one element flipped.
  const std::string b = save_checkpoint(dir_ + "/b", 5, c, stages, pp::initial_train_state(4, 5), {},
                                        [&](const model::StageSpec& s) {
                                          CheckpointReader r(a);
                                          StageData d;
                                          model::MambaLM m(c, s);
                                          pp::load_stage(r, *m, nullptr);
                                          d = pp::collect_stage(*m, nullptr);
                                          for (auto& t : d.tensors) {
                                            if (t.fqn == "backbone.layers.2.mixer.x_proj.weight" && t.slot == Slot::kParam) {
                                              t.tensor = t.tensor.clone();
                                              auto* bits = reinterpret_cast<uint32_t*>(t.tensor.data_ptr<float>());
                                              bits[5 * 64 + 7] ^= 1u;  // lowest mantissa bit of [5, 7]
                                            }
                                          }
                                          return d;
                                        });
  DiffOptions o;
  o.params_only = true;
  const DiffReport d = diff_checkpoints(a, b, o);
  EXPECT_FALSE(d.equal());
  int different = 0;
  for (const auto& t : d.tensors) {
    if (t.status == "equal") continue;
    ++different;
    EXPECT_EQ(t.fqn, "backbone.layers.2.mixer.x_proj.weight");
    EXPECT_EQ(t.differing, 1);
    EXPECT_EQ(t.first_index, (std::vector<int64_t>{5, 7}));
    EXPECT_EQ(t.max_ulp, 1.0);
    EXPECT_GT(t.max_abs, 0.0);
  }
  EXPECT_EQ(different, 1);
  o.tolerance = true;
  o.rtol = 1e-6;
  EXPECT_TRUE(diff_checkpoints(a, b, o).equal()) << "one ULP is within rtol 1e-6";
  o.params_only = false;
  EXPECT_FALSE(diff_checkpoints(a, b, o).equal()) << "b has zero optimizer state";
}

TEST_F(Reshard, DiffListsMissingAndExtraFqns) {
  const std::string a = test::save_tiny(dir_ + "/a", 0, "2,2", "none", 3, with(4, true));
  const std::string b = test::save_tiny(dir_ + "/b", 0, "3", "none", 3, with(3, true));
  const DiffReport d = diff_checkpoints(a, b, {});
  EXPECT_FALSE(d.config_equal);
  EXPECT_NE(std::find(d.only_in_a.begin(), d.only_in_a.end(), "backbone.layers.3.mixer.A_log"), d.only_in_a.end());
  EXPECT_FALSE(d.equal());
}

}  // namespace
}  // namespace pmamba::ckpt
