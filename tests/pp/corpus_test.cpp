// Megatron indexed datasets (corpus.h) and the samples drawn from them (data.h): read against
// files written by two independent writers (numpy in the fixture script, scripts/tokenize.py),
// packing, the held-out split, mixtures, and the refusals of broken files.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "src/ckpt/fs.h"
#include "src/pp/corpus.h"
#include "src/pp/data.h"
#include "src/pp/errors.h"
#include "tests/test_util.h"

namespace pmamba::pp {
namespace {

using Docs = std::vector<std::vector<int64_t>>;

void put(std::string& b, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) b.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// A Megatron index + tokens written here from the format's description (docs/DATA.md), one
// sequence per document.
void write_indexed(const std::string& prefix, const Docs& docs, int code = 8) {
  const int item = code == 8 ? 2 : code == 4 ? 4 : 1;
  std::string idx("MMIDIDX\0\0", 9), bin;
  put(idx, 1, 8);
  put(idx, static_cast<uint64_t>(code), 1);
  put(idx, docs.size(), 8);
  put(idx, docs.size() + 1, 8);
  for (const auto& d : docs) put(idx, d.size(), 4);
  uint64_t at = 0;
  for (const auto& d : docs) {
    put(idx, at, 8);
    at += d.size() * item;
  }
  for (size_t i = 0; i <= docs.size(); ++i) put(idx, i, 8);
  for (const auto& d : docs)
    for (int64_t t : d) put(bin, static_cast<uint64_t>(t), item);
  std::ofstream(prefix + ".idx", std::ios::binary) << idx;
  std::ofstream(prefix + ".bin", std::ios::binary) << bin;
}

std::string read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Document d of n: all tokens equal to base + d, lengths 3..40, so a token names its document.
Docs labelled_docs(int n, int64_t base = 1) {
  Docs docs;
  for (int d = 0; d < n; ++d) docs.push_back(std::vector<int64_t>(static_cast<size_t>(3 + (d * 7) % 38), base + d));
  return docs;
}

class Corpus : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::temp_dir("corpus"); }
  void TearDown() override { ckpt::fs::remove_tree(dir_); }
  std::string dir_;
};

TEST_F(Corpus, ReadsIndependentlyWrittenInt32AndUint16Datasets) {
  const auto expected = nlohmann::json::parse(read(test::fixture("data/indep_expected.json")));
  for (const auto& e : expected.at("datasets")) {
    const IndexedDataset ds(test::fixture("data/" + e.at("prefix").get<std::string>()));
    SCOPED_TRACE(ds.prefix());
    EXPECT_EQ(ds.dtype_name(), e.at("dtype").get<std::string>());
    ASSERT_EQ(ds.documents(), e.at("documents").get<int64_t>());
    EXPECT_EQ(ds.tokens(), e.at("tokens").get<int64_t>());
    EXPECT_EQ(ds.max_token(), e.at("max_token").get<int64_t>());
    for (int64_t d = 0; d < ds.documents(); ++d) {
      const int64_t len = ds.document_length(d);
      ASSERT_EQ(len, e.at("lengths")[d].get<int64_t>()) << "document " << d;
      std::vector<int64_t> t(static_cast<size_t>(len));
      ds.copy(d, 0, len, t.data());
      int64_t sum = 0;
      for (int64_t v : t) sum += v;
      EXPECT_EQ(t.front(), e.at("first")[d].get<int64_t>()) << "document " << d;
      EXPECT_EQ(t.back(), e.at("last")[d].get<int64_t>()) << "document " << d;
      EXPECT_EQ(sum, e.at("sums")[d].get<int64_t>()) << "document " << d;
    }
  }
}

TEST_F(Corpus, ReadsTheTokenizeScriptsOutputWithAnEodPerDocument) {
  const IndexedDataset ds(test::fixture("data/tok"));
  EXPECT_EQ(ds.dtype_name(), "uint16");
  EXPECT_EQ(ds.documents(), 199);  // 200 lines, the empty one dropped
  EXPECT_EQ(ds.tokens(), 9626);
  EXPECT_LE(ds.max_token(), 255);
  for (int64_t d = 0; d < ds.documents(); ++d) {
    int64_t last = -1;
    ds.copy(d, ds.document_length(d) - 1, 1, &last);
    EXPECT_EQ(last, 255) << "document " << d << " does not end in <eod>";
  }
}

TEST_F(Corpus, RejectsBrokenIndexesNamingWhatIsWrong) {
  const std::string good = dir_ + "/good";
  write_indexed(good, labelled_docs(5));
  const std::string idx = read(good + ".idx"), bin = read(good + ".bin");
  const auto expect_refused = [&](const std::string& idx_bytes, const std::string& bin_bytes, const std::string& want) {
    const std::string p = dir_ + "/bad";
    std::ofstream(p + ".idx", std::ios::binary) << idx_bytes;
    std::ofstream(p + ".bin", std::ios::binary) << bin_bytes;
    try {
      IndexedDataset ds(p);
      ADD_FAILURE() << "accepted; wanted: " << want;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  };
  expect_refused(idx.substr(0, 20), bin, "fewer than the 34-byte header");
  expect_refused("XXIDIDX" + idx.substr(7), bin, "does not start with Megatron's magic");
  std::string v2 = idx;
  v2[9] = 2;
  expect_refused(v2, bin, "has version 2");
  std::string f64 = idx;
  f64[17] = 6;
  expect_refused(f64, bin, "token dtype code 6");
  expect_refused(idx.substr(0, idx.size() - 8), bin, "truncated");
  expect_refused(idx, bin.substr(0, bin.size() - 2), "hold " + std::to_string(bin.size() - 2) + " bytes");
  std::string gap = idx;
  gap[34 + 4 * 5 + 8] = 7;  // sequence 1's pointer
  expect_refused(gap, bin, "sequence 1 starts at byte 7");
  std::string back = idx;
  back[34 + 12 * 5 + 8 * 2] = 0;  // document entry 2 below entry 1
  expect_refused(back, bin, "document entry 2 is 0");
  std::string last = idx;
  last[34 + 12 * 5 + 8 * 5] = 4;  // the last entry short of the sequence count
  expect_refused(last, bin, "the last document entry is 4");
}

TEST_F(Corpus, PacksEveryTrainingDocumentOncePerEpochWithEodAfterEach) {
  const std::string p = dir_ + "/d";
  const Docs docs = labelled_docs(30);
  write_indexed(p, docs);
  DataOptions o;
  o.source = "indexed:" + p;
  o.seq_len = 16;
  o.eod_token = 0;
  o.seed = 3;
  const auto data = make_data(o);
  int64_t total = 0;
  for (const auto& d : docs) total += static_cast<int64_t>(d.size()) + 1;
  const int64_t windows = (total - 1) / 16;
  // Epoch 0 read back from its windows: inputs of each, then the last target.
  const Batch b = data->batch(0, windows);
  std::vector<int64_t> stream(b.inputs.data_ptr<int64_t>(), b.inputs.data_ptr<int64_t>() + windows * 16);
  stream.push_back(b.targets[windows - 1][15].item<int64_t>());
  EXPECT_TRUE(test::bitwise_equal(b.targets.narrow(1, 0, 15), b.inputs.narrow(1, 1, 15)));
  std::map<int64_t, int64_t> run_length;
  std::vector<int64_t> order;
  for (size_t i = 0; i < stream.size();) {
    const int64_t label = stream[i];
    ASSERT_NE(label, 0) << "an EOD without a document before it at " << i;
    size_t j = i;
    while (j < stream.size() && stream[j] == label) ++j;
    order.push_back(label);
    run_length[label] = static_cast<int64_t>(j - i);
    if (j < stream.size()) {
      ASSERT_EQ(stream[j], 0) << "document " << label - 1 << " is not followed by the EOD";
      EXPECT_EQ(run_length[label], static_cast<int64_t>(docs[static_cast<size_t>(label - 1)].size()));
    }
    i = j + 1;
  }
  std::set<int64_t> seen(order.begin(), order.end());
  EXPECT_EQ(seen.size(), order.size()) << "a document came twice in one epoch";
  EXPECT_GE(static_cast<int64_t>(seen.size()), 29);  // the stream's last partial window may cut the last one
  // The next epoch walks the documents in another order.
  const Batch next = data->batch(windows, windows);
  EXPECT_FALSE(test::bitwise_equal(next.inputs, b.inputs));
}

TEST_F(Corpus, SamplesAreAPureFunctionOfTheIndexInAnyOrder) {
  const std::string p = dir_ + "/d";
  write_indexed(p, labelled_docs(40));
  DataOptions o;
  o.source = "indexed:" + p;
  o.seq_len = 8;
  o.seed = 11;
  o.eval_fraction = 0.1;
  const Batch far_first = [&] {
    const auto d = make_data(o);
    d->batch(5000, 3);  // another epoch's order cached first
    return d->batch(10, 4);
  }();
  const Batch fresh = make_data(o)->batch(8, 8);
  EXPECT_TRUE(test::bitwise_equal(far_first.inputs, fresh.inputs.narrow(0, 2, 4)));
}

TEST_F(Corpus, HeldOutDocumentsNeverAppearInTrainingSamples) {
  const std::string p = dir_ + "/d";
  const int n = 60;
  write_indexed(p, labelled_docs(n));
  DataOptions o;
  o.source = "indexed:" + p;
  o.seq_len = 12;
  o.eod_token = 0;
  o.eval_fraction = 0.2;
  o.seed = 5;
  const auto data = make_data(o);
  ASSERT_TRUE(data->held_out());
  std::set<int64_t> held, trained;
  const Batch e = data->eval_batch(0, data->eval_size());
  for (int64_t i = 0; i < e.inputs.numel(); ++i) held.insert(e.inputs.data_ptr<int64_t>()[i]);
  held.erase(0);
  // About three epochs of training samples: the first steps of many runs.
  const Batch t = data->batch(0, 3 * 1000 / 12);
  for (int64_t i = 0; i < t.inputs.numel(); ++i) trained.insert(t.inputs.data_ptr<int64_t>()[i]);
  for (int64_t i = 0; i < t.targets.numel(); ++i) trained.insert(t.targets.data_ptr<int64_t>()[i]);
  trained.erase(0);
  EXPECT_EQ(held.size(), 12u);  // 20% of 60 documents, whole
  for (int64_t label : held) EXPECT_EQ(trained.count(label), 0u) << "held-out document " << label - 1 << " was trained on";
  EXPECT_EQ(held.size() + trained.size(), static_cast<size_t>(n));
  // Another seed holds out other documents; the same seed the same ones.
  DataOptions other = o;
  other.seed = 6;
  EXPECT_FALSE(test::bitwise_equal(make_data(other)->eval_batch(0, 4).inputs, e.inputs.narrow(0, 0, 4)));
  EXPECT_EQ(make_data(o)->content(), data->content());
  // Past the held-out set, rows keep their shape and count for nothing.
  const Batch past = data->eval_batch(data->eval_size() - 1, 3);
  EXPECT_TRUE(past.mask[0].all().item<bool>());
  EXPECT_FALSE(past.mask.narrow(0, 1, 2).any().item<bool>());
}

TEST_F(Corpus, MixturesDrawInTheirProportionsOverAnyPrefix) {
  write_indexed(dir_ + "/a", labelled_docs(20, 1));
  write_indexed(dir_ + "/b", labelled_docs(20, 101));
  DataOptions o;
  o.source = "indexed:" + dir_ + "/a=0.7," + dir_ + "/b=0.3";
  o.seq_len = 4;
  const auto data = make_data(o);
  const Batch b = data->batch(0, 1000);
  // Samples of the first n drawn from a (its tokens are 1..20, b's 101..120).
  const auto from_a = [](const Batch& batch, int64_t n) {
    int64_t a = 0;
    for (int64_t i = 0; i < n; ++i) a += batch.inputs[i][0].item<int64_t>() <= 100;
    return a;
  };
  EXPECT_EQ(from_a(b, 100), 70);
  EXPECT_EQ(from_a(b, 1000), 700);
  // Weights that are not normalised are normalised; a bad one is refused.
  o.source = "indexed:" + dir_ + "/a=7," + dir_ + "/b=3";
  EXPECT_TRUE(test::bitwise_equal(make_data(o)->batch(0, 50).inputs, b.inputs.narrow(0, 0, 50)));
  // So are weights whose sum is past double's range (it used to draw every sample from b).
  o.source = "indexed:" + dir_ + "/a=1.4e308," + dir_ + "/b=0.6e308";
  EXPECT_EQ(from_a(make_data(o)->batch(0, 1000), 1000), 700);
  o.source = "indexed:" + dir_ + "/a=0.7," + dir_ + "/b=-1";
  EXPECT_THROW(make_data(o), UsageError);
  o.source = "indexed:" + dir_ + "/a=0.7," + dir_ + "/b";
  EXPECT_THROW(make_data(o), UsageError);
}

TEST_F(Corpus, TextHeldOutIsTheEndOfTheFile) {
  const std::string path = dir_ + "/t.txt";
  std::string text;
  for (int i = 0; i < 4000; ++i) text.push_back(static_cast<char>('a' + i % 26));
  for (int i = 0; i < 1000; ++i) text.push_back('#');  // the held-out quarter
  std::ofstream(path, std::ios::binary) << text;
  DataOptions o;
  o.source = "text:" + path;
  o.seq_len = 32;
  o.eval_fraction = 0.2;
  const auto data = make_data(o);
  EXPECT_EQ(data->eval_size(), (1000 - 1) / 32);
  const Batch t = data->batch(0, 500);
  for (int64_t i = 0; i < t.targets.numel(); ++i) ASSERT_NE(t.targets.data_ptr<int64_t>()[i], '#');
  const Batch e = data->eval_batch(0, data->eval_size());
  for (int64_t i = 0; i < e.inputs.numel(); ++i) ASSERT_EQ(e.inputs.data_ptr<int64_t>()[i], '#');
  // Without a split, training samples are the ones every earlier run drew.
  o.eval_fraction = 0;
  EXPECT_FALSE(make_data(o)->held_out());
}

TEST_F(Corpus, ResolvesWhatUsersWriteAfterData) {
  write_indexed(dir_ + "/c", labelled_docs(4));
  EXPECT_EQ(resolve_source(dir_ + "/c"), "indexed:" + dir_ + "/c");
  EXPECT_EQ(resolve_source(dir_ + "/c.bin"), "indexed:" + dir_ + "/c");
  EXPECT_EQ(resolve_source("a=0.5,b=0.5"), "indexed:a=0.5,b=0.5");
  EXPECT_EQ(resolve_source("book.txt"), "text:book.txt");
  EXPECT_EQ(resolve_source("ids.bin"), "tokens:ids.bin");
  EXPECT_EQ(resolve_source("induction"), "induction");
  try {
    resolve_source("selective-cpy");
    ADD_FAILURE() << "a typo accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean selective-copy?"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace pmamba::pp
