// pmamba-convert's library (src/interop/convert.h) against real transformers folders written by
// save_pretrained (tests/fixtures/hf/, made by make_hf_folders.py): the logits of an imported
// model are transformers' own, export -> re-import is byte-identical, sharding works both ways,
// and each refusal names what is wrong.
#include "src/interop/convert.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "src/ckpt/checkpoint.h"
#include "src/ckpt/fs.h"
#include "src/interop/errors.h"
#include "src/interop/safetensors.h"
#include "src/model/mamba.h"
#include "src/pp/state.h"
#include "tests/test_util.h"

namespace pmamba::interop {
namespace {

namespace fs = ckpt::fs;
using test::bitwise_equal;

std::string hf(const std::string& name) { return test::fixture("hf/" + name); }

class Convert : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::temp_dir("convert"); }
  void TearDown() override { test::remove_tree(dir_); }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  ImportResult import(const std::string& src, const std::string& out, int pp = 1, const std::string& dtype = "keep") {
    ImportOptions o;
    o.src = src;
    o.out = path(out);
    o.pp = pp;
    o.dtype = dtype;
    o.threads = 1;
    return import_model(o);
  }
  ExportResult export_to(const std::string& ckpt, const std::string& out, const std::string& format = "hf",
                         uint64_t max_shard = 5000000000ull) {
    ExportOptions o;
    o.ckpt = path(ckpt);
    o.out = path(out);
    o.format = format;
    o.max_shard_bytes = max_shard;
    return export_model(o);
  }
  /// A copy of a fixture folder that a test may edit.
  std::string copy_folder(const std::string& name, const std::string& tag = "") {
    const std::string to = path("src-" + name + tag);
    EXPECT_EQ(std::system(("cp -r '" + hf(name) + "' '" + to + "'").c_str()), 0);
    return to;
  }
  std::string dir_;
};

at::Tensor expected(const std::string& folder, const std::string& name) {
  return SafetensorsFile(hf(folder) + "/expected.safetensors").read(name);
}

at::Tensor logits_of(const std::string& ckpt, const at::Tensor& ids) {
  ckpt::CheckpointReader r(ckpt);
  const model::MambaConfig& c = r.manifest().config;
  model::MambaLM m(c, model::whole_model(c.n_layer));
  pp::load_stage(r, *m, nullptr);
  c10::NoGradGuard no_grad;
  return m->forward(ids);
}

/// FQN -> the stored parameter's digest.
std::map<std::string, uint64_t> digests(const std::string& ckpt) {
  ckpt::CheckpointReader r(ckpt);
  std::map<std::string, uint64_t> out;
  for (const auto& t : r.manifest().tensors) {
    if (t.alias_of.empty()) out[t.fqn] = t.slots.at(ckpt::Slot::kParam).digest;
  }
  return out;
}

/// name -> tensor, over every safetensors file of a folder.
std::map<std::string, at::Tensor> folder_tensors(const std::string& dir) {
  std::map<std::string, at::Tensor> out;
  for (const std::string& f : fs::list_dir(dir)) {
    if (f.size() < 12 || f.substr(f.size() - 12) != ".safetensors" || f == "expected.safetensors") continue;
    SafetensorsFile file(dir + "/" + f);
    for (const TensorInfo& t : file.tensors()) out[t.name] = file.read(t.name);
  }
  return out;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void spit(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

/// transformers' config.json may hold the bare token Infinity (not JSON); the importer reads the
/// string "Infinity" the same way, so an edited config can go through nlohmann.
std::string quote_infinity(std::string text) {
  for (size_t at = text.find("Infinity"); at != std::string::npos; at = text.find("Infinity", at + 10)) {
    text.replace(at, 8, "\"Infinity\"");
  }
  return text;
}

/// Rewrites a folder's single model.safetensors through `edit` (name -> tensor).
void rewrite_weights(const std::string& dir, const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
  std::map<std::string, at::Tensor> t;
  {
    SafetensorsFile f(dir + "/model.safetensors");
    for (const TensorInfo& i : f.tensors()) t[i.name] = f.read(i.name);
  }
  edit(t);
  std::vector<TensorSpec> specs;
  std::vector<at::Tensor> data;
  for (auto& [name, x] : t) {
    specs.push_back({name, x.scalar_type(), x.sizes().vec()});
    data.push_back(x);
  }
  write_safetensors(dir + "/model.safetensors", specs, [&](size_t i) { return data[i]; });
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

const char* const kFolders[] = {"mamba", "mamba_sharded", "mamba_untied", "mamba2", "bamba"};

TEST_F(Convert, ImportedFoldersGiveTransformersLogits) {
  for (const char* name : kFolders) {
    SCOPED_TRACE(name);
    const ImportResult r = import(hf(name), name, 2);
    const at::Tensor want = expected(name, "logits");  // (B, L, V) from transformers
    const at::Tensor got = logits_of(r.out_dir, expected(name, "input_ids"));
    ASSERT_EQ(got.sizes(), want.sizes());  // the vocabulary is transformers', unpadded
    // float32 through different reduction orders; OpenBLAS also picks its kernels by CPU (the
    // fixture's logits came from an AVX-512 machine; an AVX2 EPYC lands at 1.24e-5 on one).
    EXPECT_LE(test::max_abs_diff(got, want), 2e-5);
  }
}

TEST_F(Convert, KeepsTheSourceVocabularyExactly) {
  const ImportResult r = import(hf("mamba"), "c");
  EXPECT_EQ(r.config.vocab_size, 61);  // not a multiple of 8: pmamba must not pad it
  EXPECT_EQ(r.config.padded_vocab(), 61);
  EXPECT_EQ(r.architecture, Architecture::kHfMamba);
}

TEST_F(Convert, ShardedSourceImportsTheSameTensors) {
  const ImportResult a = import(hf("mamba"), "a"), b = import(hf("mamba_sharded"), "b", 2);
  EXPECT_EQ(digests(a.out_dir), digests(b.out_dir));
}

TEST_F(Convert, ExportThenReimportIsByteIdentical) {
  for (const char* name : kFolders) {
    SCOPED_TRACE(name);
    const ImportResult first = import(hf(name), std::string("c-") + name, 2);
    const ExportResult e = export_to(std::string("c-") + name, std::string("out-") + name);
    EXPECT_EQ(e.architecture, first.architecture);
    // Every tensor transformers saved comes back under its name with its bytes; nothing else.
    const auto original = folder_tensors(hf(name)), exported = folder_tensors(e.out);
    ASSERT_EQ(original.size(), exported.size());
    for (const auto& [n, t] : original) {
      ASSERT_TRUE(exported.count(n)) << n;
      EXPECT_TRUE(bitwise_equal(exported.at(n), t)) << n;
    }
    const ImportResult again = import(e.out, std::string("again-") + name);
    EXPECT_EQ(digests(again.out_dir), digests(first.out_dir));
    EXPECT_EQ(again.config, first.config);
  }
}

TEST_F(Convert, ExportedConfigKeepsRecordedFields) {
  const ImportResult r = import(hf("bamba"), "c");
  const ExportResult e = export_to("c", "out");
  const nlohmann::json j = nlohmann::json::parse(slurp(e.out + "/config.json"));
  const nlohmann::json src = nlohmann::json::parse(slurp(hf("bamba") + "/config.json"));
  for (const char* k : {"architectures", "model_type", "bos_token_id", "eos_token_id", "pad_token_id", "hidden_size",
                        "attn_layer_indices", "mamba_n_heads", "mamba_d_head", "num_key_value_heads", "partial_rotary_factor",
                        "rope_theta", "intermediate_size", "tie_word_embeddings", "vocab_size"}) {
    EXPECT_EQ(j.at(k), src.at(k)) << k;
  }
}

TEST_F(Convert, Mamba2ConfigWritesPythonInfinity) {
  import(hf("mamba2"), "c");
  const ExportResult e = export_to("c", "out");
  // transformers writes float("inf") as the bare token Infinity (Python's json); so does export.
  EXPECT_NE(slurp(e.out + "/config.json").find("\"time_step_limit\": [\n    0.0,\n    Infinity\n  ]"), std::string::npos)
      << slurp(e.out + "/config.json");
}

TEST_F(Convert, ShardedExportWritesAnIndexAndReimports) {
  const ImportResult first = import(hf("mamba"), "c");
  const uint64_t limit = 20000;
  const ExportResult e = export_to("c", "out", "hf", limit);
  ASSERT_GT(e.files.size(), 2u);
  const SafetensorsIndex idx = read_safetensors_index(e.out + "/model.safetensors.index.json");
  uint64_t total = 0;
  for (const std::string& f : e.files) {
    SafetensorsFile file(e.out + "/" + f);
    uint64_t bytes = 0;
    for (const TensorInfo& t : file.tensors()) {
      bytes += t.end - t.begin;
      EXPECT_EQ(idx.weight_map.at(t.name), f);
    }
    EXPECT_TRUE(bytes <= limit || file.tensors().size() == 1) << f << " holds " << bytes << " bytes";
    total += bytes;
  }
  EXPECT_EQ(idx.total_size, total);
  EXPECT_FALSE(fs::exists(e.out + "/model.safetensors"));
  EXPECT_EQ(digests(import(e.out, "again").out_dir), digests(first.out_dir));
}

TEST_F(Convert, MambaSsmExportRoundTrips) {
  for (const char* name : {"mamba", "bamba"}) {
    SCOPED_TRACE(name);
    const ImportResult first = import(hf(name), std::string("c-") + name);
    const ExportResult e = export_to(std::string("c-") + name, std::string("out-") + name, "mamba_ssm");
    const nlohmann::json j = nlohmann::json::parse(slurp(e.out + "/config.json"));
    // mamba_ssm's MambaConfig(**json) takes exactly these keys.
    std::vector<std::string> keys;
    for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
    EXPECT_EQ(keys, (std::vector<std::string>{"attn_cfg", "attn_layer_idx", "d_intermediate", "d_model", "fused_add_norm",
                                              "n_layer", "pad_vocab_size_multiple", "residual_in_fp32", "rms_norm",
                                              "ssm_cfg", "tie_embeddings", "vocab_size"}));
    EXPECT_TRUE(folder_tensors(e.out).count("backbone.embedding.weight"));
    const ImportResult again = import(e.out, std::string("again-") + name);
    EXPECT_EQ(again.architecture, Architecture::kMambaSsm);
    EXPECT_EQ(again.config, first.config);
    EXPECT_EQ(digests(again.out_dir), digests(first.out_dir));
  }
}

TEST_F(Convert, Bfloat16ImportStoresBfloat16AndEvaluates) {
  const ImportResult r = import(hf("mamba"), "c", 1, "bfloat16");
  ckpt::CheckpointReader reader(r.out_dir);
  for (const auto& t : reader.manifest().tensors) {
    if (t.alias_of.empty()) {
      EXPECT_EQ(t.slots.at(ckpt::Slot::kParam).dtype, "bfloat16") << t.fqn;
    }
  }
  // Loaded into a float32 model (the cast is exact), the logits are transformers' within bf16 rounding.
  const at::Tensor got = logits_of(r.out_dir, expected("mamba", "input_ids"));
  EXPECT_LE(test::max_abs_diff(got, expected("mamba", "logits")), 0.5);
  const ExportResult e = export_to("c", "out");
  EXPECT_EQ(nlohmann::json::parse(slurp(e.out + "/config.json")).at("torch_dtype"), "bfloat16");
}

TEST_F(Convert, RecordsFieldsThatDoNotChangeTheMath) {
  const std::string src = copy_folder("mamba");
  nlohmann::json j = nlohmann::json::parse(slurp(src + "/config.json"));
  j["use_mambapy"] = true;
  j["pad_token_id"] = 5;
  j["time_step_init_scheme"] = "constant";
  spit(src + "/config.json", j.dump());
  const ImportResult r = import(src, "c");
  ckpt::CheckpointReader reader(r.out_dir);
  const auto& rec = reader.manifest().train.at("imported_from").at("config");
  EXPECT_EQ(rec.at("use_mambapy"), true);
  EXPECT_EQ(rec.at("pad_token_id"), 5);
  EXPECT_EQ(rec.at("time_step_init_scheme"), "constant");
  EXPECT_FALSE(reader.manifest().has_optimizer);
  EXPECT_EQ(reader.manifest().step, 0);
}

TEST_F(Convert, RefusesFieldsThatChangeTheMathByName) {
  struct Case {
    const char* folder;
    const char* key;
    nlohmann::json value;
    const char* says;
  };
  const Case cases[] = {
      {"mamba", "hidden_act", "gelu", "hidden_act = \"gelu\" is not supported: pmamba's mixers use SiLU"},
      {"mamba", "intermediate_size", 80, "intermediate_size = 80 is not supported"},
      {"mamba2", "layer_norm_epsilon", 1e-6, "layer_norm_epsilon = 1e-06 is not supported"},
      {"mamba2", "num_heads", 4, "num_heads = 4 is not supported: num_heads x head_dim (4 x 8) must equal"},
      {"bamba", "intermediate_size", 100, "intermediate_size = 100 is not supported"},
      {"bamba", "attention_bias", true, "attention_bias = true is not supported"},
      {"bamba", "rope_scaling", nlohmann::json{{"type", "linear"}}, "rope_scaling = "},
      {"bamba", "model_type", "jamba", "model_type 'jamba' is not one pmamba imports"},
  };
  int i = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.key);
    const std::string src = copy_folder(c.folder, std::to_string(i));
    nlohmann::json j = nlohmann::json::parse(quote_infinity(slurp(src + "/config.json")));
    j[c.key] = c.value;
    spit(src + "/config.json", j.dump());
    const std::string out = "c" + std::to_string(i++);
    const std::string e = error_of([&] { import(src, out); });
    EXPECT_NE(e.find(c.says), std::string::npos) << e;
    EXPECT_NE(e.find(src + "/config.json"), std::string::npos) << e;
    EXPECT_FALSE(fs::exists(path(out)));  // nothing written
  }
}

TEST_F(Convert, RefusesMissingLeftoverAndMisshapenTensors) {
  {
    const std::string src = copy_folder("mamba");
    rewrite_weights(src, [](auto& t) { t.erase("backbone.layers.1.mixer.D"); });
    const std::string e = error_of([&] { import(src, "c1"); });
    EXPECT_NE(e.find("has no tensor 'backbone.layers.1.mixer.D', which a MambaForCausalLM with this config has"), std::string::npos) << e;
    test::remove_tree(src);
  }
  {
    const std::string src = copy_folder("mamba");
    rewrite_weights(src, [](auto& t) { t["backbone.layers.0.mixer.extra"] = at::zeros({3}); });
    const std::string e = error_of([&] { import(src, "c2"); });
    EXPECT_NE(e.find("holds 'backbone.layers.0.mixer.extra', which is not a tensor of a MambaForCausalLM"), std::string::npos) << e;
    test::remove_tree(src);
  }
  {
    const std::string src = copy_folder("mamba");
    rewrite_weights(src, [](auto& t) { t["backbone.norm_f.weight"] = at::ones({33}); });
    const std::string e = error_of([&] { import(src, "c3"); });
    EXPECT_NE(e.find("'backbone.norm_f.weight' has shape (33,) but the config"), std::string::npos) << e;
    EXPECT_NE(e.find("needs (32,)"), std::string::npos) << e;
    test::remove_tree(src);
  }
  {
    const std::string src = copy_folder("mamba");  // tied: a stored head must equal the embedding
    rewrite_weights(src, [](auto& t) { t["lm_head.weight"] = t.at("backbone.embeddings.weight") + 1; });
    const std::string e = error_of([&] { import(src, "c4"); });
    EXPECT_NE(e.find("the config ties the embeddings but 'lm_head.weight'"), std::string::npos) << e;
  }
  for (const char* c : {"c1", "c2", "c3", "c4"}) EXPECT_FALSE(fs::exists(path(c)));
}

TEST_F(Convert, AcceptsAStoredTiedHeadThatEqualsTheEmbedding) {
  const std::string src = copy_folder("mamba");
  rewrite_weights(src, [](auto& t) { t["lm_head.weight"] = t.at("backbone.embeddings.weight").clone(); });
  const ImportResult r = import(src, "c");
  EXPECT_EQ(digests(r.out_dir), digests(import(hf("mamba"), "plain").out_dir));
}

TEST_F(Convert, PointsAPickleOnlyFolderToTheConversionCommand) {
  const std::string src = path("bin");
  fs::make_dirs(src);
  spit(src + "/config.json", slurp(hf("mamba") + "/config.json"));
  spit(src + "/pytorch_model.bin", "not read");
  const std::string e = error_of([&] { import(src, "c"); });
  EXPECT_NE(e.find("it has pytorch_model.bin, a Python pickle pmamba does not read"), std::string::npos) << e;
  EXPECT_NE(e.find("st.save_file({k: v.contiguous().clone() for k, v in sd.items()}, '" + src + "/model.safetensors'"),
            std::string::npos)
      << e;
}

TEST_F(Convert, RefusesAnOutputThatIsNotEmpty) {
  fs::make_dirs(path("busy"));
  spit(path("busy/file"), "x");
  EXPECT_NE(error_of([&] { import(hf("mamba"), "busy"); }).find("already exists and is not an empty directory"), std::string::npos);
  import(hf("mamba"), "c");
  fs::make_dirs(path("out"));
  spit(path("out/keep"), "x");
  EXPECT_NE(error_of([&] { export_to("c", "out"); }).find("already exists and is not an empty directory"), std::string::npos);
  EXPECT_EQ(slurp(path("out/keep")), "x");
}

TEST_F(Convert, RefusesOutputsInsideACheckpoint) {
  const ImportResult r = import(hf("mamba"), "c");
  EXPECT_NE(error_of([&] { import(hf("mamba"), "c/nested"); }).find("inside"), std::string::npos);
  EXPECT_NE(error_of([&] { export_to("c", "c/step-00000000/hf"); }).find("inside"), std::string::npos);
  EXPECT_FALSE(fs::exists(path("c/nested")));
  EXPECT_FALSE(fs::exists(r.out_dir + "/hf"));
}

TEST_F(Convert, HfExportRefusesAModelWithoutATransformersClass) {
  model::MambaConfig c = model::preset("tiny");
  c.d_intermediate = 128;  // Mamba-1 layers with a gated MLP: no transformers class has that
  const std::string e = error_of([&] { hf_architecture_for(c); });
  EXPECT_NE(e.find("this model has no transformers class: Mamba-1 layers with attention or an MLP"), std::string::npos) << e;
  EXPECT_NE(e.find("--format mamba_ssm"), std::string::npos) << e;
}

TEST_F(Convert, ParsesShardSizes) {
  EXPECT_EQ(parse_size("5GB"), 5000000000ull);
  EXPECT_EQ(parse_size("20KB"), 20000ull);
  EXPECT_EQ(parse_size("1GiB"), 1ull << 30);
  EXPECT_EQ(parse_size("500mb"), 500000000ull);
  EXPECT_EQ(parse_size("123"), 123ull);
  for (const char* bad : {"", "GB", "5 GB", "-1GB", "0", "1.5GB", "5XB"}) {
    EXPECT_THROW(parse_size(bad), ConvertError) << bad;
  }
}

}  // namespace
}  // namespace pmamba::interop
