// Codec fidelity, dataset round trips for every dtype/shape, and load-time resharding.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstring>

#include "src/ckpt/codec.h"
#include "src/ckpt/errors.h"
#include "src/ckpt/lock.h"
#include "src/ckpt/format.h"
#include "src/ckpt/h5.h"
#include "src/ckpt/thread_pool.h"
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

// Our direct-chunk writer must store exactly the bytes HDF5's own pipeline (shuffle ->
// filter 32015) stores, or h5py/hdf5plugin could not read our files.
TEST_F(CkptTest, DirectChunksAreByteIdenticalToTheHdf5Pipeline) {
  h5::Silence quiet;
  register_zstd_filter();
  const at::Tensor t = at::randn({300, 7});
  const std::string path = dir_ + "/pipe.h5";
  {
    h5::Handle f = h5::create_file(path);
    hsize_t dims[2] = {300, 7}, chunk[2] = {64, 7};
    h5::Handle space(H5Screate_simple(2, dims, nullptr));
    h5::Handle dcpl(H5Pcreate(H5P_DATASET_CREATE));
    H5Pset_chunk(dcpl.get(), 2, chunk);
    H5Pset_shuffle(dcpl.get());
    const unsigned level = 5;
    H5Pset_filter(dcpl.get(), kZstdFilterId, H5Z_FLAG_MANDATORY, 1, &level);
    h5::Handle d(H5Dcreate2(f.get(), "x", H5T_IEEE_F32LE, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT));
    ASSERT_GE(H5Dwrite(d.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr()), 0);
  }
  h5::Handle f = h5::open_file(path);
  h5::Handle d = h5::open_dataset(f.get(), "x");
  ZstdCCtxPtr cctx(ZSTD_createCCtx());
  std::vector<uint8_t> scratch, mine, padded(64 * 7 * 4, 0);
  for (int c = 0; c < 5; ++c) {
    hsize_t offset[2] = {static_cast<hsize_t>(c * 64), 0}, size = 0;
    ASSERT_GE(H5Dget_chunk_storage_size(d.get(), offset, &size), 0);
    std::vector<uint8_t> stored(size);
    uint32_t mask = 1;
    ASSERT_GE(H5Dread_chunk(d.get(), H5P_DEFAULT, offset, &mask, stored.data()), 0);
    EXPECT_EQ(mask, 0u);
    const int64_t rows = std::min<int64_t>(64, 300 - c * 64);
    std::fill(padded.begin(), padded.end(), 0);
    std::memcpy(padded.data(), static_cast<const uint8_t*>(t.data_ptr()) + c * 64 * 7 * 4, rows * 7 * 4);
    encode_chunk(padded.data(), padded.size(), 4, 5, cctx.get(), scratch, mine);
    if (rows == 64) {
      EXPECT_EQ(mine, stored) << "chunk " << c;
    } else {
      // HDF5 pads the edge chunk with whatever its buffer held; compare decoded valid rows.
      std::vector<uint8_t> raw(padded.size());
      ZstdDCtxPtr dctx(ZSTD_createDCtx());
      decode_chunk(stored.data(), stored.size(), raw.data(), raw.size(), 4, true, true, dctx.get(), scratch, "edge");
      EXPECT_EQ(std::memcmp(raw.data(), padded.data(), rows * 7 * 4), 0);
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
