// Bad input gets a clear error naming what was expected, what was found, and where.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "src/ckpt/errors.h"
#include "src/ckpt/h5.h"
#include "tests/ckpt/ckpt_test_util.h"
#include "tests/test_util.h"

namespace pmamba::ckpt {
namespace {

// Writes a float32 dataset with valid attributes into an existing shard (replacing any there) and
// records the shard's new size in the manifest, as a tampering writer would.
void plant_dataset(const std::string& shard, const std::string& path, const at::Tensor& data,
                   const std::string& manifest) {
  {
    h5::Silence quiet;
    h5::Handle f = h5::open_file_rw(shard);
    if (h5::exists(f.get(), path)) H5Ldelete(f.get(), path.c_str(), H5P_DEFAULT);
    hsize_t dims[1] = {static_cast<hsize_t>(data.numel())};
    h5::Handle space(H5Screate_simple(1, dims, nullptr));
    h5::Handle lcpl(H5Pcreate(H5P_LINK_CREATE));
    H5Pset_create_intermediate_group(lcpl.get(), 1);
    h5::Handle ds(H5Dcreate2(f.get(), path.c_str(), H5T_IEEE_F32LE, space.get(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT));
    H5Dwrite(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data_ptr());
    h5::write_attr(ds.get(), "dtype", std::string("float32"));
    h5::write_attr(ds.get(), "xxh3_64", digest_hex(tensor_digest(data)));
  }
  const std::string t = fs::read_file(manifest);
  const std::string key = "\"file\":\"" + fs::basename(shard) + "\",\"bytes\":";
  const size_t p = t.find(key) + key.size();
  test::write_text(manifest, t.substr(0, p) + std::to_string(fs::file_size(shard)) + t.substr(t.find('}', p)));
}

class CheckpointErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::temp_dir("ckerr");
    root_ = dir_ + "/c";
    step_ = test::save_tiny(root_, 7, "2,2", "none");
    manifest_ = step_ + "/manifest.json";
    text_ = fs::read_file(manifest_);
  }
  void TearDown() override { test::remove_tree(dir_); }
  std::string shard(int i) const { return step_ + "/" + shard_file_name(i, 2); }
  void edit_manifest(const std::string& from, const std::string& to) {
    const std::string edited = test::replace_all(text_, from, to);
    ASSERT_NE(edited, text_) << "pattern '" << from << "' not found";
    test::write_text(manifest_, edited);
  }
  std::string dir_, root_, step_, manifest_, text_;
};

TEST_F(CheckpointErrors, RejectsDirectoryWithoutManifest) {
  fs::remove_file(manifest_);
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(step_), FormatError, "not a committed checkpoint");
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(root_), FormatError, "not a committed checkpoint");
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(dir_), FormatError, "not a committed checkpoint");
}

TEST_F(CheckpointErrors, RejectsUnknownFormatAndNewerVersion) {
  const std::string now = std::to_string(kFormatVersion), next = std::to_string(kFormatVersion + 1);
  edit_manifest("\"format_version\": " + now, "\"format_version\": " + next);
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(root_), FormatError,
                           "format_version " + next + " is newer than this pmamba supports (" + now + ")");
  edit_manifest("\"format\": \"pmamba-ckpt\"", "\"format\": \"something-else\"");
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(root_), FormatError, "not a pmamba checkpoint manifest");
}

TEST_F(CheckpointErrors, DigestMismatchNamesTheFqnAndFile) {
  const int64_t off = test::dataset_file_offset(shard(1), "/model/backbone/layers/3/mixer/A_log");
  test::flip_byte(shard(1), off + 5);
  CheckpointReader r(root_);
  try {
    r.read("backbone.layers.3.mixer.A_log", Slot::kParam);
    FAIL() << "no error";
  } catch (const IntegrityError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("digest mismatch for 'backbone.layers.3.mixer.A_log'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("stage-01-of-02.h5"), std::string::npos) << msg;
  }
  // Other tensors still load.
  EXPECT_NO_THROW(r.read("backbone.layers.2.mixer.A_log", Slot::kParam));
}

TEST_F(CheckpointErrors, RejectsTruncatedShard) {
  ASSERT_EQ(::truncate(shard(0).c_str(), fs::file_size(shard(0)) / 2), 0);
  // Every shard is checked when the reader is made, before anything is loaded.
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(root_), FormatError, "(truncated)");
}

TEST_F(CheckpointErrors, TruncatedShardWithMatchingSizeIsNotReadable) {
  // Even when the manifest is edited to the new size, a cut HDF5 file does not load.
  const int64_t half = fs::file_size(shard(0)) / 2;
  ASSERT_EQ(::truncate(shard(0).c_str(), half), 0);
  const std::string t = fs::read_file(manifest_);
  const size_t p = t.find("\"file\":\"stage-00-of-02.h5\",\"bytes\":");
  ASSERT_NE(p, std::string::npos);
  const size_t e = t.find('}', p);
  test::write_text(manifest_, t.substr(0, p) + "\"file\":\"stage-00-of-02.h5\",\"bytes\":" + std::to_string(half) + t.substr(e));
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(root_), FormatError, "stage-00-of-02.h5");
}

TEST_F(CheckpointErrors, RejectsMissingShard) {
  fs::remove_file(shard(1));
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(root_), FormatError, "missing shard 'stage-01-of-02.h5'");
}

TEST_F(CheckpointErrors, RejectsFqnMissingFromManifest) {
  const size_t p = text_.find("  \"backbone.layers.1.mixer.D\":");
  ASSERT_NE(p, std::string::npos);
  const size_t e = text_.find('\n', p);
  test::write_text(manifest_, text_.substr(0, p) + text_.substr(e + 1));
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(root_), FormatError, "checkpoint lacks 'backbone.layers.1.mixer.D'");
}

TEST_F(CheckpointErrors, RejectsFqnListedTwiceInManifest) {
  const size_t p = text_.find("  \"backbone.layers.1.mixer.D\":");
  const size_t e = text_.find('\n', p);
  const std::string line = text_.substr(p, e - p + 1);
  test::write_text(manifest_, text_.substr(0, e + 1) + line + text_.substr(e + 1));
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(root_), FormatError, "'backbone.layers.1.mixer.D' appears twice");
}

// nlohmann stops at a NUL byte as at the end of the input: what follows must not be ignored.
TEST_F(CheckpointErrors, RejectsManifestWithANulByteAndTrailingBytes) {
  test::write_text(manifest_, text_ + std::string(1, '\0') + "{\"step\": 99}");
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(root_), FormatError, "a NUL byte at offset " + std::to_string(text_.size()));
}

TEST_F(CheckpointErrors, RejectsFqnStoredInTwoShards) {
  plant_dataset(shard(1), "/model/backbone/layers/0/mixer/D", at::ones({64}), manifest_);  // layer 0 is stage 0's
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(root_), FormatError,
                           "holds 'backbone.layers.0.mixer.D' (param) which the manifest places elsewhere");
}

TEST_F(CheckpointErrors, RejectsShapeThatDisagreesWithConfig) {
  edit_manifest("\"d_state\":8", "\"d_state\":16");
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(root_), FormatError,
                           "'backbone.layers.0.mixer.x_proj.weight' has shape [18, 64] but the config expects [34, 64]");
}

TEST_F(CheckpointErrors, RejectsDtypeThatDisagrees) {
  const std::string key = "\"path\":\"/model/backbone/layers/0/mixer/D\",\"shape\":[64],\"dtype\":\"float32\"";
  edit_manifest(key, "\"path\":\"/model/backbone/layers/0/mixer/D\",\"shape\":[64],\"dtype\":\"int32\"");
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(root_), FormatError, "'backbone.layers.0.mixer.D' has dtype int32");
}

TEST_F(CheckpointErrors, RefusesAbsurdSizeBeforeAllocating) {
  edit_manifest("\"path\":\"/model/backbone/layers/0/mixer/D\",\"shape\":[64]",
                "\"path\":\"/model/backbone/layers/0/mixer/D\",\"shape\":[4000000000000000000]");
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(root_), FormatError, "absurd shape");
}

TEST_F(CheckpointErrors, ShardDatasetWithWrongShapeIsRejected) {
  plant_dataset(shard(1), "/model/backbone/layers/2/mixer/D", at::ones({1 << 20}), manifest_);
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(root_), FormatError,
                           "'backbone.layers.2.mixer.D' (param) metadata disagree with the manifest");
}

TEST_F(CheckpointErrors, RejectsUnwritableTarget) {
  const std::string file = dir_ + "/plain-file";
  test::write_text(file, "x");
  PMAMBA_EXPECT_THROW_WITH(test::save_tiny(file + "/ckpt", 0, "4"), IoError, "plain-file");
  PMAMBA_EXPECT_THROW_WITH(test::save_tiny(file, 0, "4"), IoError, "is not a directory");
  if (::geteuid() != 0) {  // root ignores permission bits
    const std::string ro = dir_ + "/ro";
    fs::make_dirs(ro);
    ::chmod(ro.c_str(), 0555);
    PMAMBA_EXPECT_THROW_WITH(test::save_tiny(ro, 0, "4"), IoError, "Permission denied");
  }
}

TEST_F(CheckpointErrors, LoadIntoModelWithOtherConfigFails) {
  model::MambaConfig c = model::preset("tiny");
  c.d_state = 4;
  model::MambaLM m(c, model::whole_model(c.n_layer));
  CheckpointReader r(root_);
  PMAMBA_EXPECT_THROW_WITH(pp::load_stage(r, *m, nullptr), FormatError, "holds a model with config");
}

}  // namespace
}  // namespace pmamba::ckpt
