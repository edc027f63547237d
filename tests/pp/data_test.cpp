#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>
#include <vector>

#include "src/pp/data.h"
#include "src/pp/errors.h"
#include "tests/test_util.h"

namespace pmamba::pp {
namespace {

TEST(Data, SamplesDependOnlyOnSeedAndGlobalIndex) {
  DataOptions o;
  o.seed = 9;
  const auto d = make_data(o);
  const Batch whole = d->batch(100, 8);
  const Batch part = d->batch(104, 2);  // samples 104, 105 in any batching
  EXPECT_TRUE(test::bitwise_equal(whole.inputs.narrow(0, 4, 2), part.inputs));
  EXPECT_TRUE(test::bitwise_equal(whole.targets.narrow(0, 4, 2), part.targets));
  o.seed = 10;
  EXPECT_FALSE(test::bitwise_equal(make_data(o)->batch(104, 2).inputs, part.inputs));
}

TEST(Data, SelectiveCopyTargetsAreTheDataTokensInOrder) {
  DataOptions o;
  o.copy_tokens = 5;
  o.copy_slots = 20;
  o.task_vocab = 10;
  const Batch b = make_data(o)->batch(0, 16);
  for (int64_t i = 0; i < 16; ++i) {
    std::vector<int64_t> data, wanted;
    for (int64_t t = 0; t < 25; ++t) {
      const int64_t x = b.inputs[i][t].item<int64_t>();
      if (x != 0) data.push_back(x);
      EXPECT_NE(x, 9) << "marker inside the data region";
    }
    for (int64_t t = 25; t < 30; ++t) {
      EXPECT_EQ(b.inputs[i][t].item<int64_t>(), 9);
      EXPECT_TRUE(b.mask[i][t].item<bool>());
      wanted.push_back(b.targets[i][t].item<int64_t>());
    }
    EXPECT_EQ(data, wanted);
    EXPECT_EQ(b.mask[i].sum().item<int64_t>(), 5);
  }
}

TEST(Data, InductionAsksForTheTokenAfterTheTrigger) {
  DataOptions o;
  o.source = "induction";
  o.seq_len = 32;
  const Batch b = make_data(o)->batch(5, 8);
  for (int64_t i = 0; i < 8; ++i) {
    int64_t at = -1;
    for (int64_t t = 0; t < 31; ++t) {
      if (b.inputs[i][t].item<int64_t>() == 15) at = t;
    }
    ASSERT_GE(at, 0);
    EXPECT_EQ(b.inputs[i][31].item<int64_t>(), 15);
    EXPECT_EQ(b.targets[i][31].item<int64_t>(), b.inputs[i][at + 1].item<int64_t>());
    EXPECT_EQ(b.mask[i].sum().item<int64_t>(), 1);
  }
}

TEST(Data, TextIsNextBytePrediction) {
  const std::string dir = test::temp_dir("data");
  std::ofstream(dir + "/t.txt") << "the quick brown fox jumps over the lazy dog, again and again";
  DataOptions o;
  o.source = "text:" + dir + "/t.txt";
  o.seq_len = 10;
  const auto d = make_data(o);
  EXPECT_EQ(d->vocab_needed(), 256);
  const Batch b = d->batch(0, 4);
  EXPECT_TRUE(test::bitwise_equal(b.inputs.narrow(1, 1, 9), b.targets.narrow(1, 0, 9)));
  o.seq_len = 1000;
  PMAMBA_EXPECT_THROW_WITH(make_data(o), UsageError, "fewer than --seq-len + 1");
  o.source = "text:" + dir + "/missing.txt";
  PMAMBA_EXPECT_THROW_WITH(make_data(o), UsageError, "cannot use data file");
  test::remove_tree(dir);
}

TEST(Data, TheLastTokenOfAStreamIsATarget) {
  // A file of exactly seq_len + 1 bytes has one window: the whole file.
  const std::string dir = test::temp_dir("data");
  std::ofstream(dir + "/t.txt") << "abcdefghijk";
  DataOptions o;
  o.source = "text:" + dir + "/t.txt";
  o.seq_len = 10;
  const Batch b = make_data(o)->batch(3, 2);
  for (int64_t i = 0; i < 2; ++i) {
    EXPECT_EQ(b.inputs[i][0].item<int64_t>(), 'a');
    EXPECT_EQ(b.targets[i][9].item<int64_t>(), 'k');
  }
  test::remove_tree(dir);
}

TEST(Data, TokenFilesAreLittleEndianUint16) {
  const std::string dir = test::temp_dir("data");
  std::vector<uint16_t> tokens(40);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint16_t>(300 + 7 * i);  // above one byte
  std::string raw;
  for (uint16_t t : tokens) {
    raw.push_back(static_cast<char>(t & 0xff));
    raw.push_back(static_cast<char>(t >> 8));
  }
  std::ofstream(dir + "/t.bin", std::ios::binary) << raw;
  DataOptions o;
  o.source = "tokens:" + dir + "/t.bin";
  o.seq_len = 8;
  const auto d = make_data(o);
  EXPECT_EQ(d->vocab_needed(), 300 + 7 * 39 + 1);
  const Batch b = d->batch(0, 6);
  for (int64_t i = 0; i < 6; ++i) {
    const int64_t first = b.inputs[i][0].item<int64_t>();
    ASSERT_EQ((first - 300) % 7, 0) << "not a token of the file: " << first;
    for (int64_t t = 0; t < 8; ++t) {
      EXPECT_EQ(b.inputs[i][t].item<int64_t>(), first + 7 * t);
      EXPECT_EQ(b.targets[i][t].item<int64_t>(), first + 7 * (t + 1));
    }
  }
  std::ofstream(dir + "/odd.bin", std::ios::binary) << "abc";
  o.source = "tokens:" + dir + "/odd.bin";
  PMAMBA_EXPECT_THROW_WITH(make_data(o), UsageError, "odd number of bytes");
  test::remove_tree(dir);
}

}  // namespace
}  // namespace pmamba::pp
