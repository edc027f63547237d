// No run can damage another's checkpoints, readers never crash or accept what verify rejects,
// and every half-state a crash can leave is recovered: the root lock, output locations, the
// recovery of a commit whose `latest` was not written, strict manifests, the version-1 global
// heap check, and resource limits.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "src/ckpt/check.h"
#include "src/ckpt/errors.h"
#include "src/ckpt/h5.h"
#include "src/ckpt/heap_check.h"
#include "src/ckpt/lock.h"
#include "src/ckpt/resources.h"
#include "src/ckpt/thread_pool.h"
#include "src/ckpt/verify.h"
#include "tests/ckpt/ckpt_test_util.h"
#include "tests/test_util.h"

namespace pmamba::ckpt {
namespace {

using ojson = nlohmann::ordered_json;

// Sets PMAMBA_FAULT for one scope.
class Fault {
 public:
  explicit Fault(const char* spec) { ::setenv("PMAMBA_FAULT", spec, 1); }
  ~Fault() { ::unsetenv("PMAMBA_FAULT"); }
};

class Reliability : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::temp_dir("rel"); }
  void TearDown() override { test::remove_tree(dir_); }
  // Rewrites a step directory's manifest through `edit`, keeping its training-state digest
  // valid (so what is tested is the check after the digest).
  void edit_manifest(const std::string& step_dir, const std::function<void(ojson&)>& edit, bool fix_digest = true) {
    const std::string path = step_dir + "/manifest.json";
    ojson j = ojson::parse(fs::read_file(path));
    edit(j);
    if (fix_digest) j["train_xxh3_64"] = digest_hex(train_digest(j["train"]));
    test::write_text(path, j.dump());
  }
  std::string writer() const { return test::bin_dir() + "/pmamba_ckpt_fault_writer"; }
  std::string dir_;
};

// ---- one writer per root ----

TEST_F(Reliability, LockRefusesASecondProcessNamingTheHolder) {
  const std::string root = dir_ + "/c";
  RootLock lock = RootLock::acquire(root, "this test");
  // Another process (the fault writer, a real second writer) is refused at once.
  const int status = test::run_shell(writer() + " " + root + " 1 tiny 1 none >" + dir_ + "/out 2>" + dir_ + "/err");
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  const std::string err = fs::read_file(dir_ + "/err");
  EXPECT_NE(err.find("is being written by another process (pid " + std::to_string(::getpid())), std::string::npos) << err;
  EXPECT_NE(err.find("(this test, since"), std::string::npos) << err;
  EXPECT_TRUE(committed_steps(root).empty());
  lock.release();
  EXPECT_EQ(WEXITSTATUS(test::run_shell(writer() + " " + root + " 1 tiny 1 none >/dev/null 2>&1")), 0);
  EXPECT_EQ(committed_steps(root), std::vector<int64_t>{1});
}

TEST_F(Reliability, LockOfADeadWriterIsFreeAtOnce) {
  const std::string root = dir_ + "/c";
  // Killed while holding the lock, mid-write: the kernel releases it, nothing is stale.
  const int status = test::run_shell("PMAMBA_FAULT=shard-written@0 exec " + writer() + " " + root + " 1 tiny 2 none >/dev/null 2>&1");
  ASSERT_TRUE(WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == 128 + SIGKILL));
  EXPECT_TRUE(fs::exists(root + "/" + kLockName));
  EXPECT_NO_THROW(RootLock::acquire(root, "this test"));
}

TEST_F(Reliability, ALockHeldHereIsSharedNotRefused) {
  const std::string root = dir_ + "/c";
  RootLock a = RootLock::acquire(root, "outer");
  RootLock b = RootLock::acquire(root, "inner");
  EXPECT_TRUE(RootLock::held_here(root));
  a.release();
  EXPECT_TRUE(RootLock::held_here(root));
  b.release();
  EXPECT_FALSE(RootLock::held_here(root));
}

TEST_F(Reliability, AFilesystemWithoutLocksIsRefusedByName) {
  Fault f("flock");
  try {
    RootLock::acquire(dir_ + "/c", "this test");
    FAIL() << "no error";
  } catch (const UsageError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("does not support flock"), std::string::npos) << m;
    EXPECT_NE(m.find("its filesystem ("), std::string::npos) << m;
  }
}

TEST_F(Reliability, CommitsOnlyUnderTheLock) {
  const std::string root = dir_ + "/c";
  fs::make_dirs(root);
  PMAMBA_EXPECT_THROW_WITH(begin_step_dir(root, 1), UsageError, "without holding its lock");
}

TEST_F(Reliability, ARootHoldingOnlyItsLockIsEmpty) {
  const std::string root = dir_ + "/c";
  EXPECT_TRUE(root_is_empty(root));
  RootLock::acquire(root, "this test").release();
  EXPECT_TRUE(root_is_empty(root));
  test::write_text(root + "/other", "x");
  EXPECT_FALSE(root_is_empty(root));
}

TEST_F(Reliability, OutputMayNotBeInsideOrContainAnInput) {
  const std::string step = test::save_tiny(dir_ + "/run", 2, "4", "none");
  const std::string root = dir_ + "/run";
  for (const std::string& out : {root, root + "/sub", root + "/sub/deeper", step, step + "/x", dir_,
                                 root + "/../run/new", std::string(dir_ + "/./run/")}) {
    EXPECT_THROW(check_output_location(out, {root}), UsageError) << out;
    EXPECT_THROW(check_output_location(out, {step}), UsageError) << out;
  }
  // Not related to any input, but inside another checkpoint: refused too.
  EXPECT_THROW(check_output_location(root + "/x", {}), UsageError);
  EXPECT_THROW(check_output_location(step, {}), UsageError);
  EXPECT_NO_THROW(check_output_location(dir_ + "/elsewhere", {root}));
  EXPECT_NO_THROW(check_output_location(dir_ + "/elsewhere/new", {step}));
  // A resumed run writing into the root it resumed from.
  EXPECT_NO_THROW(check_output_location(root, {step}, root));
  EXPECT_THROW(check_output_location(root + "/sub", {step}, root), UsageError);
}

// ---- run ids and the commit's half-states ----

TEST_F(Reliability, EveryManifestCarriesTheRunId) {
  const std::string root = dir_ + "/c";
  test::save_tiny(root, 1, "2,2");
  const std::string run = root_run_id(root);
  EXPECT_TRUE(is_run_id(run)) << run;
  test::save_tiny(root, 2, "4");  // continues the run the root holds
  EXPECT_EQ(root_run_id(root), run);
  for (const auto& c : committed_checkpoints(root)) EXPECT_EQ(c.run_id, run);
  EXPECT_NE(new_run_id(), new_run_id());
}

TEST_F(Reliability, MissingLatestFindsTheNewestCommittedCheckpoint) {
  const std::string root = dir_ + "/c";
  test::save_tiny(root, 10, "4", "none");
  test::save_tiny(root, 20, "4", "none");
  fs::remove_file(root + "/latest");  // a crash between the directory rename and `latest`
  std::string note;
  EXPECT_EQ(fs::basename(resolve_checkpoint_dir(root, &note)), "step-00000020");
  EXPECT_NE(note.find("is missing"), std::string::npos) << note;
  EXPECT_EQ(CheckpointReader(root).manifest().step, 20);
}

TEST_F(Reliability, AnOlderLatestGivesWayToANewerCommitOfTheSameRun) {
  const std::string root = dir_ + "/c";
  test::save_tiny(root, 10, "4", "none");
  test::save_tiny(root, 20, "4", "none");
  test::write_text(root + "/latest", "step-00000010\n");
  std::string note;
  EXPECT_EQ(fs::basename(resolve_checkpoint_dir(root, &note)), "step-00000020");
  EXPECT_NE(note.find("names step-00000010 but step-00000020"), std::string::npos) << note;
}

TEST_F(Reliability, ANewerStepOfAnotherRunIsNotTaken) {
  const std::string root = dir_ + "/c";
  test::save_tiny(root, 10, "4", "none");
  test::save_tiny(dir_ + "/other", 99, "4", "none");
  ASSERT_EQ(std::system(("cp -r " + dir_ + "/other/step-00000099 " + root + "/").c_str()), 0);
  EXPECT_EQ(fs::basename(resolve_checkpoint_dir(root)), "step-00000010");
}

TEST_F(Reliability, AFailedLatestWriteStillCommits) {
  const std::string root = dir_ + "/c";
  test::save_tiny(root, 10, "4", "none");
  {
    Fault f("latest-write");
    EXPECT_NO_THROW(test::save_tiny(root, 20, "4", "none"));
  }
  EXPECT_EQ(fs::read_file(root + "/latest"), "step-00000010\n");
  EXPECT_EQ(CheckpointReader(root).manifest().step, 20);
}

TEST_F(Reliability, LatestMessagesShowWhatIsThere) {
  const std::string root = dir_ + "/c";
  fs::make_dirs(root);
  test::write_text(root + "/latest", std::string("step-0000\0junk", 14));
  PMAMBA_EXPECT_THROW_WITH(resolve_checkpoint_dir(root), FormatError, "holds 'step-0000\\x00junk' (14 bytes)");
  fs::remove_file(root + "/latest");
  ASSERT_EQ(::symlink("latest", (root + "/latest").c_str()), 0);
  PMAMBA_EXPECT_THROW_WITH(resolve_checkpoint_dir(root), FormatError, "symbolic link loop");
  ASSERT_EQ(::symlink("loop", (dir_ + "/loop").c_str()), 0);
  PMAMBA_EXPECT_THROW_WITH(resolve_checkpoint_dir(dir_ + "/loop"), FormatError, "symbolic link loop");
}

// ---- manifests: nothing that cannot be right is accepted ----

TEST_F(Reliability, RejectsFractionalNumbersWhereIntegersBelong) {
  const std::string step = test::save_tiny(dir_ + "/c", 3, "2,2", "none");
  const std::string text = fs::read_file(step + "/manifest.json");
  test::write_text(step + "/manifest.json", test::replace_all(text, "\"shape\":[64]", "\"shape\":[64.5]"));
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(step), FormatError, "must be an integer, found 64.5");
  test::write_text(step + "/manifest.json", test::replace_all(text, "\"format_version\": " + std::to_string(kFormatVersion), "\"format_version\": 1.5"));
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(step), FormatError, "format_version must be an integer, found 1.5");
}

TEST_F(Reliability, RejectsATrainingStateThatCannotBeRight) {
  const std::string step = test::save_tiny(dir_ + "/c", 3, "2,2", "none");
  const std::string good = fs::read_file(step + "/manifest.json");
  edit_manifest(step, [](ojson& j) { j["train"]["step"] = -100; });
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(step), FormatError, "train.step must be an integer in [0,");
  test::write_text(step + "/manifest.json", good);
  edit_manifest(step, [](ojson& j) { j["train"]["step"] = 4; });
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(step), FormatError, "train.step is 4 but the checkpoint is of step 3");
  test::write_text(step + "/manifest.json", good);
  edit_manifest(step, [](ojson& j) { j["train"]["samples_consumed"] = -1; });
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(step), FormatError, "train.samples_consumed must be an integer");
  test::write_text(step + "/manifest.json", good);
  edit_manifest(step, [](ojson& j) { j["train"]["lr_schedule"] = {{"lr", nullptr}}; });  // what NaN becomes in JSON
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(step), FormatError, "train.lr_schedule.lr must be a number");
  // Unknown fields are ignored (forward compatibility); an edit the shards disagree with is not.
  ojson t = ojson::parse(good)["train"];
  t["future_field"] = {{"anything", true}};
  Problems p(Problems::Mode::kCollect);
  check_train_state(t, 3, p);
  EXPECT_TRUE(p.empty()) << p.list().front();
  test::write_text(step + "/manifest.json", good);
  edit_manifest(step, [](ojson& j) { j["train"]["future_field"] = 1; });
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(step), FormatError, "its training state differs from the manifest's");
}

TEST_F(Reliability, TheTrainingStateIsCoveredByADigest) {
  const std::string step = test::save_tiny(dir_ + "/c", 3, "2,2", "none");
  edit_manifest(step, [](ojson& j) { j["train"]["seed"] = 4; }, /*fix_digest=*/false);
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(step), FormatError, "does not match its digest");
}

TEST_F(Reliability, LayoutAndCompressionAreCheckedAgainstTheShards) {
  const std::string step = test::save_tiny(dir_ + "/c", 3, "2,2", "none");
  const std::string good = fs::read_file(step + "/manifest.json");
  edit_manifest(step, [](ojson& j) { j["layout"]["num_stages"] = 3; });
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(step), FormatError, "layout.num_stages is 3 but layout.stages lists 2");
  test::write_text(step + "/manifest.json", good);
  edit_manifest(step, [](ojson& j) { j["layout"]["partition"] = {1, 3}; });
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(step), FormatError, "layout.partition gives stage 0 1 layers");
  test::write_text(step + "/manifest.json", good);
  edit_manifest(step, [](ojson& j) { j["compression"] = "zstd:3"; });
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(step), FormatError, "says compression 'none' but the manifest says 'zstd:3'");
}

TEST_F(Reliability, ReadersRefuseTiedCopiesThatDiffer) {
  const std::string step = test::save_tiny(dir_ + "/c", 3, "2,2", "none");
  edit_manifest(step, [](ojson& j) { j["tensors"]["lm_head.weight"]["xxh3_64"]["param"] = "0123456789abcdef"; });
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(step), FormatError, "tied copies differ: 'lm_head.weight'");
  EXPECT_FALSE(verify_checkpoint(step, {}).ok());
}

// Every shard-level problem stops a reader with the very message verify reports first.
TEST_F(Reliability, ReadersAndVerifyShareOneChecker) {
  const std::string step = test::save_tiny(dir_ + "/c", 3, "2,2", "none");
  const std::string shard = step + "/stage-01-of-02.h5";
  const std::string pristine = dir_ + "/pristine.h5";
  ASSERT_EQ(std::system(("cp " + shard + " " + pristine).c_str()), 0);
  const std::vector<std::pair<std::string, std::function<void()>>> damage = {
      {"a dataset removed",
       [&] {
         h5::Silence q;
         h5::Handle f = h5::open_file_rw(shard);
         H5Ldelete(f.get(), "/model/backbone/layers/2/mixer/D", H5P_DEFAULT);
       }},
      {"a digest attribute changed",
       [&] {
         h5::Silence q;
         h5::Handle f = h5::open_file_rw(shard);
         h5::Handle d = h5::open_dataset(f.get(), "/model/backbone/layers/2/mixer/D");
         h5::write_attr(d.get(), "xxh3_64", std::string("0123456789abcdef"));
       }},
      {"the header's step changed",
       [&] {
         h5::Silence q;
         h5::Handle f = h5::open_file_rw(shard);
         h5::Handle root = h5::open_group(f.get(), "/");
         h5::write_attr(root.get(), "step", int64_t{4});
       }},
  };
  for (const auto& [what, hurt] : damage) {
    ASSERT_EQ(std::system(("cp " + pristine + " " + shard).c_str()), 0);
    hurt();
    // The manifest's recorded size follows the file, so the size check does not hide the rest.
    edit_manifest(step, [&](ojson& j) { j["layout"]["stages"][1]["bytes"] = fs::file_size(shard); });
    const VerifyReport report = verify_checkpoint(step, {});
    ASSERT_FALSE(report.ok()) << what;
    try {
      CheckpointReader r(step);
      ADD_FAILURE() << what << ": the reader accepted what verify rejects";
    } catch (const FormatError& e) {
      EXPECT_EQ(std::string(e.what()), report.problems.front()) << what;
    }
  }
}

TEST_F(Reliability, SizesAreCheckedBeforeAnythingIsAllocated) {
  const std::string step = test::save_tiny(dir_ + "/c", 3, "4", "none");
  // An uncompressed dataset whose declared bytes are not in the file is refused at the scan.
  {
    h5::Silence q;
    h5::Handle f = h5::open_file_rw(step + "/stage-00-of-01.h5");
    H5Ldelete(f.get(), "/model/backbone/layers/0/mixer/D", H5P_DEFAULT);
    hsize_t dims[1] = {hsize_t{1} << 38};
    h5::Handle space(H5Screate_simple(1, dims, nullptr));
    h5::Handle d(H5Dcreate2(f.get(), "/model/backbone/layers/0/mixer/D", H5T_IEEE_F32LE, space.get(), H5P_DEFAULT,
                            H5P_DEFAULT, H5P_DEFAULT));
    h5::write_attr(d.get(), "dtype", std::string("float32"));
    h5::write_attr(d.get(), "xxh3_64", std::string("0123456789abcdef"));
  }
  ShardReader shard(step + "/stage-00-of-01.h5");
  PMAMBA_EXPECT_THROW_WITH(shard.scan(), FormatError, "are not all stored in the");
  PMAMBA_EXPECT_THROW_WITH(allocate({int64_t{1} << 40}, at::kFloat, "a test tensor"), ResourceError,
                           "a test tensor needs 4398046511104 bytes (4.0 TiB)");
}

// ---- version 1 and the global heap ----

TEST_F(Reliability, VersionOneCheckpointsStillLoadBitForBit) {
  // Written by pmamba before format version 2 (pmamba-ckpt init --config micro.json, seed 0).
  CheckpointReader old(test::fixture("v1-init"));
  EXPECT_EQ(old.manifest().format_version, 1);
  EXPECT_EQ(old.manifest().run_id, "");
  const model::MambaConfig config = old.manifest().config;
  const std::string now = test::save_tiny(dir_ + "/now", 0, "1", "zstd", /*seed=*/0, config);
  const auto a = test::load_everything(test::fixture("v1-init")), b = test::load_everything(now);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) EXPECT_TRUE(test::bitwise_equal(t, b.at(name))) << name;
  EXPECT_TRUE(verify_checkpoint(test::fixture("v1-trained"), {}).ok());
}

TEST_F(Reliability, ACorruptGlobalHeapIsAnErrorNotACrash) {
  // The fixture is v1-init with the 4 bytes before the "pmamba-ckpt" string (the high half of
  // that heap object's length) overwritten with 01 01 f8 80: every reader crashed on it.
  const std::string shard = test::fixture("v1-corrupt-heap/step-00000000/stage-00-of-01.h5");
  PMAMBA_EXPECT_THROW_WITH(ShardReader r(shard), FormatError, "corrupt global heap: object 1 claims");
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(test::fixture("v1-corrupt-heap")), FormatError, "corrupt global heap");
  const VerifyReport report = verify_checkpoint(test::fixture("v1-corrupt-heap"), {});
  ASSERT_FALSE(report.ok());
  EXPECT_NE(report.problems.front().find("corrupt global heap"), std::string::npos) << report.problems.front();
}

// A collection as HDF5 writes one: header, objects 1..n, free space to the end.
std::vector<uint8_t> collection(const std::vector<std::pair<uint16_t, std::string>>& objects, size_t size = 4096) {
  std::vector<uint8_t> c(size, 0);
  auto put = [&](size_t at, uint64_t v, int n) {
    for (int i = 0; i < n; ++i) c[at + i] = static_cast<uint8_t>(v >> (8 * i));
  };
  std::memcpy(c.data(), "GCOL", 4);
  c[4] = 1;
  put(8, size, 8);
  size_t p = 16;
  for (const auto& [index, data] : objects) {
    put(p, index, 2);
    put(p + 2, 1, 2);
    put(p + 8, data.size(), 8);
    std::memcpy(c.data() + p + 16, data.data(), data.size());
    p += 16 + ((data.size() + 7) & ~size_t{7});
  }
  put(p, 0, 2);
  put(p + 8, size - p, 8);  // free space counts its own header
  return c;
}

TEST_F(Reliability, HeapCheckerRejectsEachKindOfDamage) {
  const auto ok = collection({{1, "pmamba-ckpt"}, {2, "{\"d_model\": 8}"}, {3, "float32"}});
  EXPECT_NO_THROW(check_heap_collection(ok.data(), ok.size(), "ok"));
  auto bad = ok;
  bad[16 + 12] = 0x80;  // object 1's length: high half
  PMAMBA_EXPECT_THROW_WITH(check_heap_collection(bad.data(), bad.size(), "x"), FormatError, "object 1 claims");
  const auto gap = collection({{1, "a"}, {3, "b"}});
  PMAMBA_EXPECT_THROW_WITH(check_heap_collection(gap.data(), gap.size(), "x"), FormatError, "not numbered 1..2");
  const auto twice = collection({{1, "a"}, {1, "b"}});
  PMAMBA_EXPECT_THROW_WITH(check_heap_collection(twice.data(), twice.size(), "x"), FormatError, "appears twice");
  auto no_free = ok;
  const size_t free_at = 16 + 3 * 16 + 16 + 16 + 8;  // after the three objects
  std::memset(no_free.data() + free_at + 8, 0, 8);     // free space of length 0 would loop forever
  PMAMBA_EXPECT_THROW_WITH(check_heap_collection(no_free.data(), no_free.size(), "x"), FormatError, "free space of 0 bytes");
  // In a file: a collection declaring more bytes than the file has.
  std::vector<uint8_t> file(8192, 0);
  std::memcpy(file.data() + 1000, ok.data(), ok.size());
  file[1000 + 8 + 2] = 0x7f;  // declared size far beyond the file
  auto read = [&](int64_t off, uint8_t* dest, size_t n) {
    const size_t k = std::min(n, file.size() - static_cast<size_t>(off));
    std::memcpy(dest, file.data() + off, k);
    return k;
  };
  PMAMBA_EXPECT_THROW_WITH(check_heaps_in(read, static_cast<int64_t>(file.size()), {}, "f"), FormatError,
                           "the collection at byte 1000 declares");
  // The same bytes inside raw tensor data are just data.
  EXPECT_NO_THROW(check_heaps_in(read, static_cast<int64_t>(file.size()), {{900, 6000}}, "f"));
}

struct AttributeCount {
  int attributes = 0, variable = 0;
};

herr_t count_attribute(hid_t loc, const char* name, const H5A_info_t*, void* data) {
  auto* c = static_cast<AttributeCount*>(data);
  h5::Handle a(H5Aopen(loc, name, H5P_DEFAULT));
  h5::Handle t(H5Aget_type(a.get()));
  ++c->attributes;
  if (H5Tget_class(t.get()) == H5T_STRING && H5Tis_variable_str(t.get()) > 0) ++c->variable;
  return 0;
}

herr_t count_object_attributes(hid_t loc, const char* path, const H5O_info_t*, void* data) {
  h5::Handle o(H5Oopen(loc, path, H5P_DEFAULT));
  hsize_t idx = 0;
  return H5Aiterate2(o.get(), H5_INDEX_NAME, H5_ITER_INC, &idx, count_attribute, data);
}

TEST_F(Reliability, VersionTwoShardsHoldNoVariableLengthStrings) {
  const std::string step = test::save_tiny(dir_ + "/c", 1, "2,2", "zstd");
  h5::Silence q;
  for (const char* name : {"/stage-00-of-02.h5", "/stage-01-of-02.h5"}) {
    h5::Handle f = h5::open_file(step + name);
    AttributeCount count;
#if H5_VERSION_GE(1, 12, 0)
    ASSERT_GE(H5Ovisit3(f.get(), H5_INDEX_NAME, H5_ITER_INC, count_object_attributes, &count, H5O_INFO_BASIC), 0);
#else
    ASSERT_GE(H5Ovisit2(f.get(), H5_INDEX_NAME, H5_ITER_INC, count_object_attributes, &count, H5O_INFO_BASIC), 0);
#endif
    EXPECT_GT(count.attributes, 20);
    EXPECT_EQ(count.variable, 0) << name;
  }
  // A version-2 shard with a variable-length string attribute is refused before it is read.
  {
    h5::Handle f = h5::open_file_rw(step + "/stage-00-of-02.h5");
    h5::Handle root = h5::open_group(f.get(), "/");
    H5Adelete(root.get(), "config");
    h5::Handle t(H5Tcopy(H5T_C_S1));
    H5Tset_size(t.get(), H5T_VARIABLE);
    h5::Handle space(H5Screate(H5S_SCALAR));
    h5::Handle a(H5Acreate2(root.get(), "config", t.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT));
    const char* v = "{}";
    H5Awrite(a.get(), t.get(), &v);
  }
  PMAMBA_EXPECT_THROW_WITH(ShardReader r(step + "/stage-00-of-02.h5"), FormatError,
                           "attribute 'config' is a variable-length string");
}

// ---- resources ----

TEST_F(Reliability, AThreadThatCannotStartIsAnErrorNotAnAbort) {
  Fault f("thread@1");
  PMAMBA_EXPECT_THROW_WITH(ThreadPool pool(3), ResourceError, "cannot start thread 2 of 3");
}

TEST_F(Reliability, ThreadCountsBeyondTheMachineAreRefused) {
  PMAMBA_EXPECT_THROW_WITH(check_threads(100000), UsageError, "--threads must be in [0, ");
  PMAMBA_EXPECT_THROW_WITH(check_threads(-1), UsageError, "--threads must be in [0, ");
  EXPECT_NO_THROW(check_threads(0));
}

}  // namespace
}  // namespace pmamba::ckpt
