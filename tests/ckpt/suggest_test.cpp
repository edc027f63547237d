// "did you mean ...": the edit distance, the thresholds and the wording the tools print.
#include "src/ckpt/suggest.h"

#include <gtest/gtest.h>

#include "src/ckpt/text.h"

namespace pmamba::ckpt {
namespace {

TEST(Suggest, EditDistanceCountsSwapsAsOneStep) {
  EXPECT_EQ(edit_distance("steps", "steps"), 0u);
  EXPECT_EQ(edit_distance("stesp", "steps"), 1u);   // swap of two neighbours
  EXPECT_EQ(edit_distance("verfy", "verify"), 1u);  // insertion
  EXPECT_EQ(edit_distance("1f1", "1f1b"), 1u);
  EXPECT_EQ(edit_distance("gpipe", "1f1b"), 5u);
  EXPECT_EQ(edit_distance("", "abc"), 3u);
  EXPECT_EQ(edit_distance("abc", ""), 3u);
  EXPECT_EQ(edit_distance("ca", "abc"), 3u);  // optimal string alignment: no edit after a swap
}

TEST(Suggest, NamesTheClosestCandidate) {
  const std::vector<std::string> options = {"--seed", "--steps", "--stop-after", "--lr"};
  EXPECT_EQ(did_you_mean("--stesp", options), " (did you mean --steps?)");
  EXPECT_EQ(did_you_mean("-steps", options), " (did you mean --steps?)");  // dashes do not count
  EXPECT_EQ(did_you_mean("verfy", {"init", "info", "ls", "verify", "diff", "params"}), " (did you mean verify?)");
  EXPECT_EQ(did_you_mean("1f1", {"gpipe", "1f1b"}), " (did you mean 1f1b?)");
}

TEST(Suggest, StaysQuietWhenNothingIsClose) {
  EXPECT_EQ(did_you_mean("--frobnicate", {"--steps", "--seed"}), "");
  EXPECT_EQ(did_you_mean("z", {"ls", "xy"}), "");  // one letter: no edit allowed
  EXPECT_EQ(did_you_mean("2", {"0", "1"}), "");       // (--zero 2)
  EXPECT_EQ(did_you_mean("abc", {"xyz"}), "");     // three letters: at most one edit
  EXPECT_EQ(did_you_mean("--steps", {"--steps", "--step"}), "");  // the word is a candidate
  EXPECT_EQ(did_you_mean("", {"a"}), "");
  EXPECT_EQ(did_you_mean("--stesp", {}), "");
}

TEST(Suggest, FallsBackToAUniquePrefix) {
  EXPECT_EQ(did_you_mean("--microbatch", {"--microbatches", "--microbatch-size"}),
            " (did you mean --microbatches?)");  // distance 2 beats the ambiguous prefix
  EXPECT_EQ(did_you_mean("--init", {"--init-from", "--resume"}), " (did you mean --init-from?)");
  EXPECT_EQ(did_you_mean("x", {"ls", "xy"}), " (did you mean xy?)");  // too short for an edit, but a prefix
  EXPECT_EQ(did_you_mean("--mic", {"--microbatches", "--microbatch-size"}), "");  // two prefixes, nothing near
}

TEST(Suggest, ListsTies) {
  EXPECT_EQ(did_you_mean("--tope", {"--top", "--tops"}), " (did you mean --top or --tops?)");
  EXPECT_EQ(closest_matches("ab", {"ax", "ay", "az", "aw"}).size(), 4u);
  EXPECT_EQ(did_you_mean("ab", {"ax", "ay", "az", "aw"}), " (did you mean ax, ay or az?)");
}

TEST(ReportText, FormatsNumbersOneWay) {
  EXPECT_EQ(with_commas(0), "0");
  EXPECT_EQ(with_commas(1234567), "1,234,567");
  EXPECT_EQ(with_commas(-1234), "-1,234");
  EXPECT_EQ(format_bytes(812), "812 B");
  EXPECT_EQ(format_bytes(1024), "1.0 KiB");
  EXPECT_EQ(format_bytes(1664000), "1.6 MiB");
  EXPECT_EQ(format_bytes(int64_t{1} << 40), "1.0 TiB");
  EXPECT_EQ(format_bytes_exact(1664000), "1,664,000 bytes (1.6 MiB)");
  EXPECT_EQ(format_float(0.001), "0.001");
  EXPECT_EQ(format_float(1.0 / 3.0), "0.333333");
  EXPECT_EQ(format_ratio(3.214), "3.21x");
}

TEST(ReportText, FlattensNestedObjectsWithDots) {
  const auto j = nlohmann::ordered_json::parse(R"({"seed": 5, "data": {"source": "induction", "seq_len": 64},
                                                  "lr": 0.001, "partition": [1, 3], "none": {}, "path": ""})");
  const auto rows = flatten_json(j);
  ASSERT_EQ(rows.size(), 7u);
  EXPECT_EQ(rows[0], (std::pair<std::string, std::string>{"seed", "5"}));
  EXPECT_EQ(rows[1], (std::pair<std::string, std::string>{"data.source", "induction"}));
  EXPECT_EQ(rows[2], (std::pair<std::string, std::string>{"data.seq_len", "64"}));
  EXPECT_EQ(rows[3], (std::pair<std::string, std::string>{"lr", "0.001"}));
  EXPECT_EQ(rows[4], (std::pair<std::string, std::string>{"partition", "[1,3]"}));
  EXPECT_EQ(rows[5], (std::pair<std::string, std::string>{"none", "{}"}));
  EXPECT_EQ(rows[6], (std::pair<std::string, std::string>{"path", "\"\""}));
  EXPECT_EQ(two_column_table({{"a", "1"}, {"data.seq_len", "64"}}, "  "), "  a             1\n  data.seq_len  64\n");
}

}  // namespace
}  // namespace pmamba::ckpt
