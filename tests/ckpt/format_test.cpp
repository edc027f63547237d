// Codec fidelity, dataset round trips for every dtype/shape, and load-time resharding.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <fcntl.h>
#include <unistd.h>

#include "src/ckpt/codec.h"
#include "src/ckpt/errors.h"
#include "src/ckpt/lock.h"
#include "src/ckpt/format.h"
#include "src/ckpt/h5.h"
#include "src/ckpt/tensor_file.h"
#include "src/ckpt/thread_pool.h"
#include "src/ckpt/verify.h"
#include "src/ckpt/zstd_filter.h"
#include "tests/ckpt/ckpt_test_util.h"
#include "tests/test_util.h"

namespace pmamba::ckpt {
namespace {

class CkptTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::temp_dir("ckpt"); }
  void TearDown() override { test::remove_tree(dir_); }
  std::string dir_;
};

TEST(Codec, ShuffleMatchesHdf5LayoutAndInverts) {
  std::vector<uint8_t> in(4 * 5 + 3), out(in.size()), back(in.size());
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<uint8_t>(i);
  shuffle_bytes(in.data(), out.data(), in.size(), 4);
  // byte j of element i goes to j * n + i (n = 5 whole elements), leftover bytes stay at the end
  EXPECT_EQ(out[0], 0);
  EXPECT_EQ(out[1], 4);
  EXPECT_EQ(out[5], 1);
  EXPECT_EQ(out[20], 20);
  unshuffle_bytes(out.data(), back.data(), out.size(), 4);
  EXPECT_EQ(back, in);
}

// The vector shuffle (16 elements at a time) must give the byte-gather loop's output for every
// length, including the tails it leaves to the loop.
TEST(Codec, VectorShuffleMatchesTheByteLoop) {
  for (size_t elem : {2, 4, 8}) {
    for (size_t n : {0, 1, 15, 16, 17, 31, 32, 33, 100, 1023, 4099}) {
      const size_t left = elem - 1;  // bytes after the last whole element stay in place
      std::vector<uint8_t> in(n * elem + left), out(in.size()), want(in.size()), back(in.size());
      for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<uint8_t>(i * 2654435761u >> 11);
      for (size_t j = 0; j < elem; ++j)
        for (size_t i = 0; i < n; ++i) want[j * n + i] = in[i * elem + j];
      std::copy(in.end() - static_cast<std::ptrdiff_t>(left), in.end(), want.end() - static_cast<std::ptrdiff_t>(left));
      shuffle_bytes(in.data(), out.data(), in.size(), elem);
      EXPECT_EQ(out, want) << "elem " << elem << " n " << n;
      unshuffle_bytes(out.data(), back.data(), out.size(), elem);
      EXPECT_EQ(back, in) << "elem " << elem << " n " << n;
    }
  }
}

// Writes `t` (float32, 2-D) through HDF5's own pipeline (shuffle -> filter 32015 at `level`) in
// chunks of `chunk_rows` rows and returns the file's path.
std::string write_through_pipeline(const std::string& path, const at::Tensor& t, hsize_t chunk_rows, unsigned level) {
  h5::Handle f = h5::create_file(path);
  hsize_t dims[2] = {static_cast<hsize_t>(t.size(0)), static_cast<hsize_t>(t.size(1))};
  hsize_t chunk[2] = {chunk_rows, dims[1]};
  h5::Handle space(H5Screate_simple(2, dims, nullptr));
  h5::Handle dcpl(H5Pcreate(H5P_DATASET_CREATE));
  H5Pset_chunk(dcpl.get(), 2, chunk);
  H5Pset_shuffle(dcpl.get());
  H5Pset_filter(dcpl.get(), kZstdFilterId, H5Z_FLAG_MANDATORY, 1, &level);
  h5::Handle d(H5Dcreate2(f.get(), "x", H5T_IEEE_F32LE, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT));
  EXPECT_GE(H5Dwrite(d.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr()), 0);
  return path;
}

// Where zstd's match finder pays (repeated rows here), our direct-chunk writer stores exactly
// the bytes HDF5's own pipeline (shuffle -> filter 32015) stores, for small chunks (coded both
// ways) and large ones (decided from a sample).
TEST_F(CkptTest, DirectChunksAreByteIdenticalToTheHdf5PipelineWhereMatchesPay) {
  h5::Silence quiet;
  register_zstd_filter();
  at::Generator g = at::detail::createCPUGenerator(5);
  for (const int64_t width : {7, 768}) {
    const int64_t chunk_rows = width == 7 ? 64 : 1400;  // 1792 bytes; 4.3 MB, past the sampling size
    const at::Tensor t = at::randn({1, width}, g).repeat({3 * chunk_rows, 1}).contiguous();
    const std::string path = write_through_pipeline(dir_ + "/pipe.h5", t, chunk_rows, 5);
    h5::Handle f = h5::open_file(path);
    h5::Handle d = h5::open_dataset(f.get(), "x");
    ZstdCCtxPtr cctx(ZSTD_createCCtx());
    std::vector<uint8_t> scratch, mine;
    const size_t chunk_bytes = static_cast<size_t>(chunk_rows * width * 4);
    for (int c = 0; c < 3; ++c) {
      hsize_t offset[2] = {static_cast<hsize_t>(c * chunk_rows), 0}, size = 0;
      ASSERT_GE(H5Dget_chunk_storage_size(d.get(), offset, &size), 0);
      std::vector<uint8_t> stored(size);
      uint32_t mask = 1;
      ASSERT_GE(H5Dread_chunk(d.get(), H5P_DEFAULT, offset, &mask, stored.data()), 0);
      EXPECT_EQ(mask, 0u);
      encode_chunk(static_cast<const uint8_t*>(t.data_ptr()) + c * chunk_bytes, chunk_bytes, 4, 5, cctx.get(), scratch,
                   mine);
      EXPECT_EQ(mine, stored) << "width " << width << " chunk " << c;
    }
    f.reset();
    fs::remove_tree(path);
  }
}

// Random floats (what trained weights and optimizer moments look like) are entropy coded without
// the match finder: the frame is smaller than zstd's own pass makes (no larger for chunks small
// enough to be coded both ways), records its size, and
// decodes through libzstd and through HDF5's pipeline to the original, for every float width,
// small chunks (coded both ways) and large ones (sampled).
TEST_F(CkptTest, RandomFloatChunksAreEntropyCodedSmallerThanZstdsOwnPass) {
  h5::Silence quiet;
  register_zstd_filter();
  at::Generator g = at::detail::createCPUGenerator(9);
  ZstdCCtxPtr cctx(ZSTD_createCCtx());
  ZstdDCtxPtr dctx(ZSTD_createDCtx());
  for (const auto dtype : {at::kFloat, at::kBFloat16, at::kDouble}) {
    for (const int64_t rows : {int64_t{10}, int64_t{1365}}) {  // 30 KB or 4 MB of float32
      // Drawn in the dtype itself: a float widened to double has 29 zero mantissa bits, which
      // the match finder rightly keeps.
      const at::Tensor t = (at::randn({rows, 768}, g, dtype == at::kDouble ? at::kDouble : at::kFloat) * 0.02)
                               .to(dtype)
                               .contiguous();
      const auto* raw = static_cast<const uint8_t*>(t.data_ptr());
      const size_t bytes = t.nbytes(), elem = t.element_size();
      std::vector<uint8_t> scratch, mine, shuffled(bytes), plain(ZSTD_compressBound(bytes));
      encode_chunk(raw, bytes, elem, 1, cctx.get(), scratch, mine);
      shuffle_bytes(raw, shuffled.data(), bytes, elem);
      const size_t plain_size = ZSTD_compressCCtx(cctx.get(), plain.data(), plain.size(), shuffled.data(), bytes, 1);
      ASSERT_FALSE(ZSTD_isError(plain_size));
      const std::string what = std::string(c10::toString(dtype)) + " rows " + std::to_string(rows);
      if (bytes > (64 << 10)) {
        EXPECT_LT(mine.size(), plain_size) << what;
      } else {  // coded both ways, the smaller kept
        EXPECT_LE(mine.size(), plain_size) << what;
      }
      EXPECT_EQ(ZSTD_getFrameContentSize(mine.data(), mine.size()), bytes) << what;
      std::vector<uint8_t> back(bytes);
      decode_chunk(mine.data(), mine.size(), back.data(), bytes, elem, true, true, dctx.get(), scratch, what);
      EXPECT_EQ(std::memcmp(back.data(), raw, bytes), 0) << what;
      if (dtype != at::kFloat) continue;
      // The chunk as one direct chunk of a dataset HDF5 reads through its own filters.
      const std::string path = dir_ + "/direct.h5";
      {
        h5::Handle f = h5::create_file(path);
        hsize_t dims[2] = {static_cast<hsize_t>(rows), 768};
        h5::Handle space(H5Screate_simple(2, dims, nullptr));
        h5::Handle dcpl(H5Pcreate(H5P_DATASET_CREATE));
        H5Pset_chunk(dcpl.get(), 2, dims);
        H5Pset_shuffle(dcpl.get());
        const unsigned level = 1;
        H5Pset_filter(dcpl.get(), kZstdFilterId, H5Z_FLAG_MANDATORY, 1, &level);
        h5::Handle d(H5Dcreate2(f.get(), "x", H5T_IEEE_F32LE, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT));
        hsize_t offset[2] = {0, 0};
        ASSERT_GE(H5Dwrite_chunk(d.get(), H5P_DEFAULT, 0, offset, mine.size(), mine.data()), 0);
      }
      h5::Handle f = h5::open_file(path);
      h5::Handle d = h5::open_dataset(f.get(), "x");
      at::Tensor read = at::empty_like(t);
      ASSERT_GE(H5Dread(d.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, read.data_ptr()), 0);
      EXPECT_TRUE(test::bitwise_equal(read, t)) << what << " (HDF5 pipeline)";
      d.reset();
      f.reset();
      fs::remove_tree(path);
    }
  }
}

// Chunks of any size and content, coded and decoded: sizes around the block (128 KiB) and
// sampling boundaries, constant, small-integer and random bytes, elements of 1 to 8 bytes.
TEST(Codec, ChunksOfEverySizeAndContentRoundTrip) {
  ZstdCCtxPtr cctx(ZSTD_createCCtx());
  ZstdDCtxPtr dctx(ZSTD_createDCtx());
  std::vector<uint8_t> scratch, frame;
  uint64_t state = 88172645463325252ull;
  auto next = [&] {  // xorshift64: reproducible bytes without a torch generator
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  for (const size_t bytes : {size_t{1}, size_t{8}, size_t{4099}, size_t{65536}, size_t{65544}, size_t{131072},
                             size_t{131075}, size_t{131080}, size_t{1u << 20}}) {
    for (const size_t elem : {size_t{1}, size_t{2}, size_t{4}, size_t{8}}) {
      for (int content = 0; content < 3; ++content) {
        std::vector<uint8_t> raw(bytes), back(bytes);
        for (size_t i = 0; i < bytes; ++i) {
          raw[i] = content == 0 ? 0 : content == 1 ? static_cast<uint8_t>(i % elem == 0 ? i / elem % 7 : 0)
                                                   : static_cast<uint8_t>(next());
        }
        encode_chunk(raw.data(), bytes, elem, 3, cctx.get(), scratch, frame);
        const std::string what = "bytes " + std::to_string(bytes) + " elem " + std::to_string(elem) + " content " +
                                 std::to_string(content);
        EXPECT_LE(frame.size(), ZSTD_compressBound(bytes)) << what;
        decode_chunk(frame.data(), frame.size(), back.data(), bytes, elem, true, true, dctx.get(), scratch, what);
        EXPECT_EQ(back, raw) << what;
      }
    }
  }
}

// add_all compresses the next tensors' chunks while earlier ones are written (the window runs
// across datasets); the file must be the one add() writes tensor by tensor, byte for byte, and
// read back as written. Many small datasets of 1-3 chunks and a scalar between them put dataset
// boundaries inside the window.
// Uncompressed datasets of 64 KiB or more start on 4096-byte boundaries, and their whole blocks
// go out with O_DIRECT where the filesystem takes it (the tails and small datasets buffered);
// whichever way, they read back bit for bit, and the file is the one a buffered writer makes.
TEST_F(CkptTest, DirectWritesAlignLargeDatasetsAndReadBack) {
  std::vector<TensorToSave> ts;
  at::Generator g = at::detail::createCPUGenerator(3);
  ts.push_back({"a.body_and_tail", Slot::kParam, at::randn({16 * 1024 + 25}, g)});  // 64 KiB + 100 bytes
  ts.push_back({"b.small", Slot::kParam, at::randn({250}, g)});
  ts.push_back({"c.whole_blocks", Slot::kParam, at::randn({32, 1024}, g)});  // 128 KiB exactly
  ts.push_back({"d.step", Slot::kStep, at::tensor(int64_t{3})});
  ts.push_back({"e.big", Slot::kParam, at::randn({2300, 1024}, g)});  // past the 8 MiB bounce buffer
  ShardHeader h;
  h.config_json = "{}";
  h.train_json = "{}";
  auto write = [&](const std::string& sub, SaveProfile* prof) {
    fs::make_dirs(dir_ + "/" + sub);
    WriteOptions w;
    w.profile = prof;
    return write_shard(dir_ + "/" + sub, h, ts, {}, w);
  };
  SaveProfile prof;
  const std::string direct_path = write(std::string("direct"), &prof);
  std::string buffered_path;
  {
    ::setenv("PMAMBA_DIRECT_IO", "0", 1);
    SaveProfile none;
    buffered_path = write("buffered", &none);
    ::unsetenv("PMAMBA_DIRECT_IO");
    EXPECT_EQ(none.direct_bytes, 0);
  }
  EXPECT_EQ(fs::read_file(direct_path, int64_t{1} << 30), fs::read_file(buffered_path, int64_t{1} << 30));
  const int probe = ::open(direct_path.c_str(), O_RDONLY | O_DIRECT);
  if (probe >= 0) {
    ::close(probe);
    // The whole blocks of the three large datasets: 65536 + 131072 + 9420800 bytes.
    EXPECT_EQ(prof.direct_bytes, 65536 + 131072 + 2300 * 1024 * 4);
  } else {
    ADD_FAILURE() << "not checked: " << dir_ << " takes no O_DIRECT (" << std::strerror(errno) << ")";
  }
  h5::Silence quiet;
  h5::Handle f = h5::open_file(direct_path);
  for (const char* big : {"/model/a/body_and_tail", "/model/c/whole_blocks", "/model/e/big"}) {
    h5::Handle d = h5::open_dataset(f.get(), big);
    EXPECT_EQ(H5Dget_offset(d.get()) % 4096, 0u) << big;
  }
  ShardReader r(direct_path);
  const auto infos = r.scan();
  ASSERT_EQ(infos.size(), ts.size());
  for (const auto& t : ts) {
    const auto it = std::find_if(infos.begin(), infos.end(),
                                 [&](const StoredDataset& d) { return d.fqn == t.fqn && d.slot == t.slot; });
    ASSERT_NE(it, infos.end()) << t.fqn;
    at::Tensor back = at::empty(t.tensor.sizes(), t.tensor.options());
    r.read(*it, back, nullptr);
    EXPECT_TRUE(test::bitwise_equal(back, t.tensor)) << t.fqn;
  }
}

// A page-aligned tensor (an async save's snapshot) goes to the disk with O_DIRECT from its own
// memory; any other is copied through the bounce buffer first. Both give the same file.
TEST_F(CkptTest, DirectWritesPageAlignedTensorsWithoutTheBounceCopy) {
  constexpr int64_t kFloats = 300 * 1024 + 7;  // whole blocks past one bounce buffer, and a tail
  auto page_aligned = [](size_t bytes) {
    void* p = nullptr;
    EXPECT_EQ(::posix_memalign(&p, 4096, bytes), 0);
    return std::unique_ptr<void, void (*)(void*)>(p, std::free);
  };
  auto mem_a = page_aligned(kFloats * 4), mem_b = page_aligned(kFloats * 4 + 64);
  const at::Tensor aligned = at::from_blob(mem_a.get(), {kFloats}, at::kFloat);
  // 64 bytes into its buffer: aligned as torch aligns, not to a page.
  const at::Tensor misaligned = at::from_blob(static_cast<float*>(mem_b.get()) + 16, {kFloats}, at::kFloat);
  at::Generator g = at::detail::createCPUGenerator(5);
  aligned.copy_(at::randn({kFloats}, g));
  misaligned.copy_(aligned);
  ASSERT_EQ(reinterpret_cast<uintptr_t>(aligned.data_ptr()) % 4096, 0u);
  ASSERT_NE(reinterpret_cast<uintptr_t>(misaligned.data_ptr()) % 4096, 0u);
  ShardHeader h;
  h.config_json = "{}";
  h.train_json = "{}";
  auto write = [&](const std::string& sub, const at::Tensor& t, SaveProfile* prof) {
    fs::make_dirs(dir_ + "/" + sub);
    WriteOptions w;
    w.profile = prof;
    return write_shard(dir_ + "/" + sub, h, {{"w", Slot::kParam, t}}, {}, w);
  };
  SaveProfile from_aligned, from_misaligned;
  const std::string a = write("aligned", aligned, &from_aligned);
  const std::string b = write("misaligned", misaligned, &from_misaligned);
  EXPECT_EQ(fs::read_file(a, int64_t{1} << 30), fs::read_file(b, int64_t{1} << 30));
  const int probe = ::open(a.c_str(), O_RDONLY | O_DIRECT);
  if (probe < 0) {
    ADD_FAILURE() << "not checked: " << dir_ << " takes no O_DIRECT (" << std::strerror(errno) << ")";
    return;
  }
  ::close(probe);
  const int64_t body = kFloats * 4 / 4096 * 4096;
  EXPECT_EQ(from_aligned.direct_bytes, body);
  EXPECT_EQ(from_aligned.bounce_bytes, 0);
  EXPECT_EQ(from_misaligned.direct_bytes, body);
  EXPECT_EQ(from_misaligned.bounce_bytes, body);
  ShardReader r(a);
  at::Tensor back = at::empty({kFloats}, at::kFloat);
  r.read(r.scan().at(0), back, nullptr);
  EXPECT_TRUE(test::bitwise_equal(back, aligned));
}

TEST_F(CkptTest, PipelinedWritesGiveTheFileOneByOneWritesGive) {
  std::vector<TensorToSave> ts;
  at::Generator g = at::detail::createCPUGenerator(11);
  for (int i = 0; i < 40; ++i) {
    const int64_t rows = 1 + (i * 37) % 90;
    ts.push_back({"t." + std::to_string(i), Slot::kParam, at::randn({rows, 5}, g)});
    if (i % 7 == 3) ts.push_back({"t." + std::to_string(i), Slot::kStep, at::tensor(int64_t{i})});
    if (i % 11 == 5) ts.push_back({"t." + std::to_string(i), Slot::kExpAvg, at::randn({rows, 5}, g).to(at::kHalf)});
  }
  ShardHeader h;
  h.config_json = "{}";
  h.train_json = "{}";
  WriteOptions w;
  w.compression = Compression::parse("zstd:3");
  w.chunk_bytes = 600;  // 30 rows of 5 floats: 1-3 chunks per dataset
  w.threads = 2;
  const std::string one = dir_ + "/one", all = dir_ + "/all";
  fs::make_dirs(one);
  fs::make_dirs(all);
  std::string path_one, path_all;
  {
    ShardWriter writer(one, h, w);
    for (const auto& t : ts) writer.add(t);
    path_one = writer.finish();
  }
  {
    ShardWriter writer(all, h, w);
    writer.add_all(ts);
    path_all = writer.finish();
  }
  EXPECT_EQ(fs::read_file(path_all), fs::read_file(path_one));
  ShardReader r(path_all);
  const auto infos = r.scan();
  ASSERT_EQ(infos.size(), ts.size());
  ThreadPool pool(2);
  for (const auto& t : ts) {
    const auto it = std::find_if(infos.begin(), infos.end(),
                                 [&](const StoredDataset& d) { return d.fqn == t.fqn && d.slot == t.slot; });
    ASSERT_NE(it, infos.end()) << t.fqn;
    at::Tensor back = at::empty(t.tensor.sizes(), t.tensor.options());
    r.read(*it, back, &pool);
    EXPECT_TRUE(test::bitwise_equal(back, t.tensor)) << t.fqn << " " << slot_name(t.slot);
  }
}

// A writer creates a dataset's parent groups once and keeps them open; copy() makes its own. Both
// orders in one group: a copied dataset beside added ones, and an added one beside copies.
TEST_F(CkptTest, CopiedAndAddedDatasetsShareTheirGroups) {
  at::Generator g = at::detail::createCPUGenerator(5);
  ShardHeader h;
  h.config_json = "{}";
  h.train_json = "{}";
  WriteOptions w;
  w.compression = Compression::parse("none");
  const std::string src_dir = dir_ + "/src", out_dir = dir_ + "/out";
  fs::make_dirs(src_dir);
  fs::make_dirs(out_dir);
  const std::vector<TensorToSave> src_ts = {{"a.mixer.w", Slot::kParam, at::randn({300, 64}, g)},
                                            {"b.mixer.w", Slot::kExpAvg, at::randn({7}, g)}};
  const std::string src_path = write_shard(src_dir, h, src_ts, {}, w);
  ShardReader src(src_path);
  const auto src_infos = src.scan();
  auto info = [&](const std::string& fqn) {
    return *std::find_if(src_infos.begin(), src_infos.end(), [&](const StoredDataset& d) { return d.fqn == fqn; });
  };
  const std::vector<TensorToSave> added = {{"a.mixer.w", Slot::kExpAvg, at::randn({300, 64}, g)},
                                           {"a.mixer.v", Slot::kParam, at::randn({3, 3}, g)},
                                           {"b.mixer.w", Slot::kParam, at::randn({7}, g)}};
  std::string path;
  {
    ShardWriter writer(out_dir, h, w);
    writer.copy(src, info("a.mixer.w"));             // /model/a/mixer made by the copy
    writer.add_all({added[0], added[1]});            // /optim/a/mixer/w and /model/a/mixer by the writer
    writer.add(added[2]);                            // /model/b/mixer by the writer
    writer.copy(src, info("b.mixer.w"));             // /optim/b/mixer made by the copy
    path = writer.finish();
  }
  ShardReader r(path);
  const auto infos = r.scan();
  ASSERT_EQ(infos.size(), 5u);
  std::vector<TensorToSave> want = added;
  want.insert(want.end(), src_ts.begin(), src_ts.end());
  for (const auto& t : want) {
    const auto it = std::find_if(infos.begin(), infos.end(),
                                 [&](const StoredDataset& d) { return d.fqn == t.fqn && d.slot == t.slot; });
    ASSERT_NE(it, infos.end()) << t.fqn << " " << slot_name(t.slot);
    at::Tensor back = at::empty(t.tensor.sizes(), t.tensor.options());
    r.read(*it, back, nullptr);
    EXPECT_TRUE(test::bitwise_equal(back, t.tensor)) << t.fqn << " " << slot_name(t.slot);
  }
}

// HDF5 writes the current second into every object header unless told not to, so one state
// saved twice differed in its bytes whenever the two saves straddled a second (seen as flaky
// file comparisons under load). No object of a shard (added, copied, an alias link's groups;
// compressed or not) or of a tensor file carries a timestamp.
TEST_F(CkptTest, ShardObjectsCarryNoTimestamps) {
  at::Generator g = at::detail::createCPUGenerator(2);
  ShardHeader h;
  h.config_json = "{}";
  h.train_json = "{}";
  for (const std::string comp : {"none", "zstd:1"}) {
    WriteOptions w;
    w.compression = Compression::parse(comp);
    const std::string src_dir = dir_ + "/src-" + comp, out_dir = dir_ + "/out-" + comp;
    fs::make_dirs(src_dir);
    fs::make_dirs(out_dir);
    const std::string src_path =
        write_shard(src_dir, h, {{"layers.0.mixer.w", Slot::kParam, at::randn({40, 8}, g)}}, {}, w);
    ShardReader src(src_path);
    std::string path;
    {
      ShardWriter writer(out_dir, h, w);
      writer.add({"layers.1.mixer.w", Slot::kExpAvg, at::randn({40, 8}, g)});
      writer.add({"step", Slot::kStep, at::tensor(int64_t{3})});
      writer.copy(src, src.scan().at(0));
      writer.add_alias({"lm_head.weight", "layers.1.mixer.w", "", {{Slot::kExpAvg, 0}}});
      path = writer.finish();
    }
    const std::string tensors = dir_ + "/tensors-" + comp + ".h5";
    write_tensor_file(tensors, {{"/a/b/x", at::randn({3}, g)}, {"y", at::randn({2}, g)}});
    for (const std::string& file : {src_path, path, tensors}) {
      h5::Handle f = h5::open_file(file);
      std::vector<std::string> timed;
      auto visit = [](hid_t, const char* name, const H5O_info_t* info, void* data) -> herr_t {
        if (info->atime != 0 || info->mtime != 0 || info->ctime != 0 || info->btime != 0) {
          static_cast<std::vector<std::string>*>(data)->push_back(name);
        }
        return 0;
      };
      ASSERT_GE(H5Ovisit2(f.get(), H5_INDEX_NAME, H5_ITER_INC, visit, &timed, H5O_INFO_TIME), 0);
      EXPECT_TRUE(timed.empty()) << comp << " " << file << ": " << timed.size() << " objects with times, first '"
                                 << (timed.empty() ? "" : timed.front()) << "'";
    }
  }
}

TEST_F(CkptTest, RoundTripsAllDtypesAndShapes) {
  for (const std::string comp : {"none", "zstd:1", "zstd:9"}) {
    std::vector<TensorToSave> items;
    auto add = [&](const std::string& fqn, Slot slot, at::Tensor t) { items.push_back({fqn, slot, t}); };
    add("a.f32", Slot::kParam, at::randn({37, 5}));
    add("a.f64", Slot::kParam, at::randn({3, 4, 5}, at::kDouble));
    add("a.bf16", Slot::kParam, at::randn({1001}).to(at::kBFloat16));
    add("a.f16", Slot::kParam, at::randn({9, 2}).to(at::kHalf));
    add("a.i64", Slot::kParam, at::randint(-1000000, 1000000, {17}, at::kLong));
    add("a.i32", Slot::kParam, at::randint(-1000, 1000, {4, 4}, at::kInt));
    add("a.f32", Slot::kStep, at::scalar_tensor(int64_t{42}, at::kLong));
    add("a.empty", Slot::kParam, at::empty({0, 3}));
    add("a.strided", Slot::kParam, at::randn({6, 8}).t());  // non-contiguous input
    ShardHeader h;
    h.config_json = "{}";
    WriteOptions w;
    w.compression = Compression::parse(comp);
    w.chunk_bytes = 64;
    w.threads = 3;
    const std::string path = write_shard(dir_, h, items, {}, w);
    ShardReader reader(path);
    const auto infos = reader.scan();
    ASSERT_EQ(infos.size(), items.size());
    ThreadPool pool(2);
    for (const auto& item : items) {
      const auto it = std::find_if(infos.begin(), infos.end(), [&](const StoredDataset& d) {
        return d.fqn == item.fqn && d.slot == item.slot;
      });
      ASSERT_NE(it, infos.end()) << item.fqn;
      EXPECT_EQ(it->dtype, dtype_name(item.tensor.scalar_type()));
      EXPECT_EQ(it->digest, tensor_digest(item.tensor));
      EXPECT_EQ(it->compressed, w.compression.zstd && item.tensor.dim() > 0 && item.tensor.numel() > 0);
      at::Tensor back = at::empty(item.tensor.sizes(), item.tensor.options().memory_format(at::MemoryFormat::Contiguous));
      reader.read(*it, back, &pool);
      EXPECT_TRUE(test::bitwise_equal(back, item.tensor)) << comp << " " << item.fqn;
      at::Tensor serial = at::empty_like(back);
      reader.read(*it, serial, nullptr);  // HDF5's own pipeline path
      EXPECT_TRUE(test::bitwise_equal(serial, item.tensor)) << comp << " " << item.fqn << " (pipeline)";
    }
    fs::remove_tree(path);
  }
}

// Writes every stage of a tied tiny model (PP 2) with random optimizer state into a fresh
// locked step directory; returns its writers' records.
std::vector<WrittenShard> write_stages(const std::string& tmp, const model::MambaConfig& config,
                                       const std::vector<model::StageSpec>& stages, const std::string& compression) {
  std::vector<WrittenShard> written(stages.size());
  WriteOptions w;
  w.compression = Compression::parse(compression);
  w.chunk_bytes = 1024;  // many chunks, edge chunks included
  for (size_t i = 0; i < stages.size(); ++i) {
    model::MambaLM m(config, stages[i]);
    m->init_parameters(5);
    std::vector<std::pair<std::string, at::Tensor>> named;
    for (const auto& item : m->named_parameters()) named.emplace_back(item.key(), item.value());
    pp::AdamW opt(named, config, {});
    for (const auto& [fqn, p] : named) {
      if (opt.is_follower(fqn)) continue;  // the tied head shares the embedding's state
      // Seeded by the FQN (the embedding's for the tied head): tied copies on two stages agree.
      const std::string key = fqn == model::kLmHeadFqn ? model::kEmbeddingFqn : fqn;
      at::Generator g = at::detail::createCPUGenerator(std::hash<std::string>{}(key));
      opt.state(fqn).exp_avg = at::normal(0, 1e-2, p.sizes(), g);
      opt.state(fqn).exp_avg_sq = at::normal(0, 1e-2, p.sizes(), g).pow_(2);
      opt.state(fqn).step = 7;
    }
    ShardHeader h;
    h.stage = stages[i].stage;
    h.num_stages = stages[i].num_stages;
    h.layer_begin = stages[i].layer_begin;
    h.layer_end = stages[i].layer_end;
    h.step = 7;
    h.config_json = model::config_to_json_string(config);
    h.train_json = pp::initial_train_state(5, 7).dump();
    const StageData d = pp::collect_stage(*m, &opt);
    write_shard(tmp, h, d.tensors, d.aliases, w, &written[i]);
  }
  return written;
}

// A process that wrote every shard builds the manifest from its writers' records instead of
// rescanning the files: the result must be the scan's, byte for byte.
TEST_F(CkptTest, ManifestFromWriterRecordsEqualsTheScan) {
  const model::MambaConfig config = model::preset("tiny");
  const auto stages = model::make_stages(config.n_layer, 2, "");
  const auto train = pp::initial_train_state(5, 7);
  for (const std::string comp : {"none", "zstd:1"}) {
    const std::string root = dir_ + "/" + comp.substr(0, 4);
    RootLock lock = RootLock::acquire(root, "this test");
    const std::string tmp = begin_step_dir(root, 7);
    const std::vector<WrittenShard> written = write_stages(tmp, config, stages, comp);
    const Compression c = Compression::parse(comp);
    const Manifest scanned = build_manifest(tmp, "0123456789abcdef0123456789abcdef", config, stages, 7, c, true, train);
    const Manifest recorded =
        build_manifest(tmp, "0123456789abcdef0123456789abcdef", config, stages, 7, c, true, train, written);
    EXPECT_EQ(manifest_to_json(recorded), manifest_to_json(scanned)) << comp;
    // The records name the slots a scan finds, with the scan's stored sizes.
    ShardReader r(written[1].path);
    const auto found = r.scan();
    ASSERT_EQ(found.size(), written[1].datasets.size());
    for (size_t i = 0; i < found.size(); ++i) {
      EXPECT_EQ(found[i].path, written[1].datasets[i].path);
      EXPECT_EQ(found[i].stored_bytes, written[1].datasets[i].stored_bytes) << found[i].path;
      EXPECT_EQ(found[i].compressed, written[1].datasets[i].compressed) << found[i].path;
    }
    abort_step_dir(tmp);
  }
}

// Building from records must still notice a file that is no longer what its writer fsynced, and
// a record that disagrees with the file (here: a forged digest) is caught by every reader and by
// verify, which compare the manifest with the shards themselves.
TEST_F(CkptTest, RecordsThatDisagreeWithTheFilesAreCaught) {
  const model::MambaConfig config = model::preset("tiny");
  const auto stages = model::make_stages(config.n_layer, 2, "");
  const auto train = pp::initial_train_state(5, 7);
  const std::string root = dir_ + "/r";
  RootLock lock = RootLock::acquire(root, "this test");
  const std::string run = "0123456789abcdef0123456789abcdef";
  {
    const std::string tmp = begin_step_dir(root, 7);
    const std::vector<WrittenShard> written = write_stages(tmp, config, stages, "none");
    {
      std::ofstream grow(written[0].path, std::ios::app | std::ios::binary);
      grow << "x";
    }
    PMAMBA_EXPECT_THROW_WITH(build_manifest(tmp, run, config, stages, 7, Compression{}, true, train, written),
                             FormatError, "but its writer wrote");
    abort_step_dir(tmp);
  }
  const std::string tmp = begin_step_dir(root, 7);
  std::vector<WrittenShard> written = write_stages(tmp, config, stages, "none");
  for (auto& d : written[1].datasets) {
    if (d.fqn == "backbone.layers.2.mixer.D" && d.slot == Slot::kParam) d.digest ^= 1;
  }
  const Manifest m = build_manifest(tmp, run, config, stages, 7, Compression{}, true, train, written);
  const std::string step = commit_step_dir(root, tmp, m, {}).dir;
  PMAMBA_EXPECT_THROW_WITH(CheckpointReader r(step), FormatError, "metadata disagree with the manifest");
  const VerifyReport report = verify_checkpoint(step, {});
  ASSERT_FALSE(report.ok());
  EXPECT_NE(report.problems.front().find("backbone.layers.2.mixer.D"), std::string::npos) << report.problems.front();
}

// save_checkpoint reports where its time went when asked, and writes the same files either way.
TEST_F(CkptTest, SaveProfileAccountsForThePhases) {
  const model::MambaConfig config = model::preset("tiny");
  const auto stages = model::make_stages(config.n_layer, 2, "");
  SaveProfile prof;
  SaveOptions o;
  o.write.compression = Compression::parse("zstd:1");
  o.profile = &prof;
  o.run_id = "0123456789abcdef0123456789abcdef";
  auto produce = [&](const model::StageSpec& spec) {
    model::MambaLM m(config, spec);
    m->init_parameters(2);
    return pp::collect_stage(*m, nullptr);
  };
  const std::string a = save_checkpoint(dir_ + "/a", 1, config, stages, pp::initial_train_state(2, 1), o, produce);
  o.profile = nullptr;
  const std::string b = save_checkpoint(dir_ + "/b", 1, config, stages, pp::initial_train_state(2, 1), o, produce);
  EXPECT_EQ(prof.shards, 2);
  EXPECT_EQ(prof.datasets, static_cast<int64_t>(model::list_parameters(config).size() - 1) * 4);  // the tied head is an alias
  EXPECT_GT(prof.data_s, 0);
  EXPECT_GT(prof.metadata_s, 0);
  EXPECT_GT(prof.manifest_s, 0);
  EXPECT_GT(prof.commit_s, 0);
  EXPECT_EQ(fs::read_file(a + "/manifest.json"), fs::read_file(b + "/manifest.json"));
}

TEST_F(CkptTest, LoadsAtAnyPipelineDegree) {
  const std::string root = dir_ + "/c";
  test::save_tiny(root, 0, "1,2,1", "zstd");
  const model::MambaConfig c = model::preset("tiny");
  model::MambaLM whole(c, model::whole_model(c.n_layer));
  whole->init_parameters(3);
  std::map<std::string, at::Tensor> ref;
  for (const auto& item : whole->named_parameters()) ref[item.key()] = item.value();
  CheckpointReader reader(root);
  EXPECT_EQ(reader.manifest().stages.size(), 3u);
  for (const std::string layout : {"4", "0,4", "2,2,0", "1,1,1,1,0"}) {
    for (const auto& spec : model::make_stages(c.n_layer, 0, layout)) {
      model::MambaLM m(c, spec);
      pp::load_stage(reader, *m, nullptr);
      for (const auto& item : m->named_parameters()) {
        EXPECT_TRUE(test::bitwise_equal(item.value(), ref.at(item.key()))) << layout << " " << item.key();
      }
    }
  }
}

TEST_F(CkptTest, TiedHeadIsStoredOnceAsAnAlias) {
  const std::string root = dir_ + "/c";
  const std::string dir = test::save_tiny(root, 0, "2,2", "none");
  CheckpointReader r(root);
  const TensorEntry* head = r.manifest().find("lm_head.weight");
  ASSERT_NE(head, nullptr);
  EXPECT_EQ(head->alias_of, "backbone.embedding.weight");
  EXPECT_TRUE(head->slots.empty());
  EXPECT_EQ(head->file, "stage-01-of-02.h5");
  for (const auto& d : r.shard_datasets("stage-01-of-02.h5")) {
    EXPECT_EQ(d.second.fqn.find("lm_head"), std::string::npos) << "the tied head's bytes are stored twice";
  }
  EXPECT_TRUE(test::bitwise_equal(r.read("lm_head.weight", Slot::kParam),
                                  r.read("backbone.embedding.weight", Slot::kParam)));
}

TEST_F(CkptTest, KeepsOnlyTheLastKCommittedCheckpoints) {
  const std::string root = dir_ + "/c";
  const model::MambaConfig c = model::preset("tiny");
  for (int64_t step : {10, 20, 30, 40}) {
    SaveOptions o;
    o.keep_last = 2;
    save_checkpoint(root, step, c, model::make_stages(c.n_layer, 1, ""), pp::initial_train_state(1, step), o,
                    [&](const model::StageSpec& s) {
                      model::MambaLM m(c, s);
                      m->init_parameters(1);
                      return pp::collect_stage(*m, nullptr);
                    });
  }
  EXPECT_EQ(committed_steps(root), (std::vector<int64_t>{30, 40}));
  EXPECT_EQ(fs::read_file(root + "/latest"), "step-00000040\n");
}

TEST_F(CkptTest, RewritingACommittedStepSwapsItAtomically) {
  const std::string root = dir_ + "/c";
  test::save_tiny(root, 5, "2,2", "zstd", /*seed=*/1);
  const auto first = test::load_everything(root);
  test::save_tiny(root, 5, "1,3", "none", /*seed=*/2);
  const auto second = test::load_everything(root);
  EXPECT_FALSE(test::bitwise_equal(first.at("backbone.embedding.weight/param"),
                                   second.at("backbone.embedding.weight/param")));
  EXPECT_EQ(fs::list_dir(root), (std::vector<std::string>{kLockName, "latest", "step-00000005"}));
}

}  // namespace
}  // namespace pmamba::ckpt
