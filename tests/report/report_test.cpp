// pmamba-report's library (src/report): the metrics contract (run headers, resumed runs whose
// last line per step wins, malformed lines named, a truncated last line skipped), the plots
// (absent metrics omitted, non-finite values counted, points per series), HTML escaping, and
// the checkpoint table against real checkpoints (one of them damaged). Every metrics file is
// written here by hand, not produced by the code under test.
#include "src/report/report.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "src/ckpt/checkpoint.h"
#include "src/ckpt/fs.h"
#include "src/pp/state.h"
#include "src/report/errors.h"
#include "tests/test_util.h"

namespace pmamba::report {
namespace {

namespace fs = ckpt::fs;

// A step line as the trainer writes it (every key but the eval ones).
std::string step_line(int64_t step, double loss, const std::string& extra = "") {
  std::ostringstream o;
  o << "{\"step\": " << step << ", \"loss\": " << loss << ", \"accuracy\": 0.5, \"lr\": 0.001, \"grad_norm\": 1.5, "
    << "\"tokens_per_s\": 1000, \"step_time_s\": 0.01, \"bubble\": 0.25" << extra << "}\n";
  return o.str();
}

std::string header_line(const std::string& run_id, int64_t start, const std::string& resumed_from = "") {
  return "{\"run_id\": \"" + run_id + "\", \"start_step\": " + std::to_string(start) + ", \"resumed_from\": " +
         (resumed_from.empty() ? "null" : "\"" + resumed_from + "\"") + ", \"pp\": 2, \"dp\": 1, \"partition\": \"2,2\"}\n";
}

// The value of `attr` on the element whose opening tag contains `marker` (first match).
std::string attr_of(const std::string& html, const std::string& marker, const std::string& attr) {
  const size_t at = html.find(marker);
  if (at == std::string::npos) return "<no element with " + marker + ">";
  const size_t begin = html.rfind('<', at);
  const size_t end = html.find('>', at);
  const std::string tag = html.substr(begin, end - begin);
  // Found by hand, not with std::regex: libstdc++'s matcher recurses once per character, and a
  // polyline's `points` of ~1000 vertices overflowed the stack under AddressSanitizer.
  const std::string key = " " + attr + "=\"";
  const size_t v = tag.find(key);
  if (v == std::string::npos) return "<no " + attr + ">";
  const size_t from = v + key.size(), to = tag.find('"', from);
  if (to == std::string::npos) return "<unterminated " + attr + ">";
  return tag.substr(from, to - from);
}

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

ReportData data_for(const std::string& text) {
  ReportData d;
  d.run_dir = "/runs/r";
  d.metrics_path = "/runs/r/metrics.jsonl";
  d.metrics = parse_metrics(text, d.metrics_path);
  for (const auto& h : d.metrics.runs) d.run_ids.push_back(h.run_id);
  return d;
}

TEST(Report, ParsesResumedMetricsKeepingLastLinePerStep) {
  // Run A logs 1..37 (checkpoint at 30, then a crash); run B resumes from 30 and logs 31..60.
  std::string text = header_line("aaaa", 0);
  for (int s = 1; s <= 37; ++s) text += step_line(s, 10.0 + s);
  text += header_line("aaaa", 30, "step-00000030");
  for (int s = 31; s <= 60; ++s) text += step_line(s, 100.0 + s);
  const Metrics m = parse_metrics(text, "m.jsonl");
  ASSERT_EQ(m.runs.size(), 2u);
  EXPECT_EQ(m.runs[0].start_step, 0);
  EXPECT_EQ(m.runs[1].start_step, 30);
  EXPECT_EQ(m.runs[1].resumed_from, "step-00000030");
  EXPECT_EQ(m.runs[1].line, 39);
  ASSERT_EQ(m.steps.size(), 60u);
  EXPECT_EQ(m.superseded, 7);
  for (size_t i = 0; i < m.steps.size(); ++i) EXPECT_EQ(m.steps[i].step, static_cast<int64_t>(i) + 1);
  EXPECT_DOUBLE_EQ(m.steps[29].get("loss"), 40.0);  // step 30: only run A wrote it
  EXPECT_EQ(m.steps[29].run, 0);
  EXPECT_DOUBLE_EQ(m.steps[30].get("loss"), 131.0);  // step 31: run B's line wins
  EXPECT_DOUBLE_EQ(m.steps[36].get("loss"), 137.0);  // step 37: written by both
  EXPECT_EQ(m.steps[36].run, 1);
  EXPECT_EQ(m.steps[36].line, 39 + 7);

  // The page plots each step once: 60 loss points, and says that 7 lines were replaced.
  const std::string html = render_report(data_for(text));
  EXPECT_EQ(attr_of(html, "data-metric=\"loss\"", "data-points"), "60");
  EXPECT_EQ(attr_of(html, "data-series=\"loss\"", "data-points"), "60");
  EXPECT_NE(html.find("7 step lines were written again by a resumed run"), std::string::npos);
  EXPECT_NE(html.find("class=\"mark\""), std::string::npos);  // the resume is marked on the plots
}

TEST(Report, IgnoresUnknownKeysAndKeepsHeadersApart) {
  const std::string text = "{\"run_id\": \"r1\", \"start_step\": 0, \"versions\": {\"torch\": \"2.1\"}, \"config\": {}}\n"
                           "\n" +
                           step_line(1, 2.0, ", \"time\": \"2024-05-01T10:00:00Z\", \"future_key\": [1, 2]");
  const Metrics m = parse_metrics(text, "m.jsonl");
  ASSERT_EQ(m.runs.size(), 1u);
  EXPECT_EQ(m.runs[0].run_id, "r1");
  ASSERT_EQ(m.steps.size(), 1u);
  EXPECT_EQ(m.steps[0].time, "2024-05-01T10:00:00Z");
  EXPECT_FALSE(m.steps[0].has("future_key"));
  EXPECT_EQ(m.steps[0].run, 0);
  EXPECT_EQ(m.lines, 2);  // the blank line is not counted
}

TEST(Report, RejectsMalformedLineNamingIt) {
  const std::string good = header_line("r", 0) + step_line(1, 1.0);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{\"step\": 2, \"loss\": oops}\n", "not a JSON object"},
      {"[1, 2, 3]\n", "expected a JSON object, found an array"},
      {"{\"step\": \"2\", \"loss\": 1}\n", "\"step\" must be a non-negative integer, found a string"},
      {"{\"step\": 2.5, \"loss\": 1}\n", "\"step\" must be a non-negative integer, found 2.5"},
      {"{\"step\": -1, \"loss\": 1}\n", "\"step\" must be a non-negative integer, found -1"},
      {"{\"step\": 2, \"loss\": \"1.5\"}\n", "\"loss\" must be a number or null, found a string"},
      {"{\"step\": 2, \"bubble\": {}}\n", "\"bubble\" must be a number or null, found an object"},
  };
  for (const auto& [bad, why] : cases) {
    // The bad line is line 3, with a good line after it.
    const std::string text = good + bad + step_line(3, 1.0);
    PMAMBA_EXPECT_THROW_WITH(parse_metrics(text, "runs/m.jsonl"), MetricsError,
                             "metrics file 'runs/m.jsonl' line 3: " + why);
  }
  // A MetricsError is a checkpoint-library FormatError: the tools exit 2 for it.
  EXPECT_THROW(parse_metrics("{\"step\": true}\n", "x"), ckpt::FormatError);
  // An unfinished line that is not the last one is not a cut-short write but a damaged file.
  PMAMBA_EXPECT_THROW_WITH(parse_metrics(good + "{\"step\": 2, \"lo" + "\n" + step_line(3, 1.0), "m"), MetricsError,
                           "line 3: not a JSON object");
}

TEST(Report, SkipsTruncatedLastLine) {
  const std::string good = header_line("r", 0) + step_line(1, 1.0) + step_line(2, 0.9);
  const std::vector<std::string> cuts = {"{\"step\": 3, \"loss\": 0.8, \"accu", "{\"step\": 3, \"loss\": 0.",
                                         "{\"step\": 3, \"loss\": nu", "{"};
  for (const std::string& cut : cuts) {
    const Metrics m = parse_metrics(good + cut, "m.jsonl");
    EXPECT_EQ(m.steps.size(), 2u) << cut;
    ASSERT_EQ(m.warnings.size(), 1u) << cut;
    EXPECT_NE(m.warnings[0].find("metrics file 'm.jsonl' line 4 is cut short"), std::string::npos) << m.warnings[0];
    // And the page shows the warning.
    const std::string html = render_report(data_for(good + cut));
    EXPECT_NE(html.find("line 4 is cut short"), std::string::npos);
  }
  // Blank lines after it change nothing.
  EXPECT_EQ(parse_metrics(good + "{\"step\": 3, \"lo\n\n  \n", "m").warnings.size(), 1u);
  // A complete last line that is not JSON is an error, not a cut-short write.
  PMAMBA_EXPECT_THROW_WITH(parse_metrics(good + "garbage\n", "m.jsonl"), MetricsError, "line 4: not a JSON object");
}

TEST(Report, OmitsAbsentMetrics) {
  // No bubble, no eval keys, no accuracy at all.
  std::string text = header_line("r", 0);
  for (int s = 1; s <= 5; ++s) {
    text += "{\"step\": " + std::to_string(s) + ", \"loss\": 1.0, \"lr\": 0.1, \"grad_norm\": 2, \"tokens_per_s\": 5}\n";
  }
  const std::vector<Plot> plots = make_plots(parse_metrics(text, "m"));
  std::vector<std::string> names;
  for (const auto& p : plots) names.push_back(p.metric);
  EXPECT_EQ(names, (std::vector<std::string>{"loss", "lr", "grad_norm", "tokens_per_s"}));
  ASSERT_EQ(plots[0].series.size(), 1u);  // no eval_loss series either
  const std::string html = render_report(data_for(text));
  EXPECT_EQ(html.find("data-metric=\"bubble\""), std::string::npos);
  EXPECT_EQ(html.find("data-metric=\"accuracy\""), std::string::npos);
  EXPECT_EQ(html.find("data-series=\"eval_loss\""), std::string::npos);
  EXPECT_EQ(count(html, "<svg class=\"plot\""), 4u);

  // A metric written only as null is present: its plot is drawn (empty) with the note.
  const std::string nulls = header_line("r", 0) + "{\"step\": 1, \"loss\": 1, \"bubble\": null}\n" +
                            "{\"step\": 2, \"loss\": 1, \"bubble\": null}\n";
  const std::string h2 = render_report(data_for(nulls));
  EXPECT_EQ(attr_of(h2, "data-metric=\"bubble\"", "data-points"), "0");
  EXPECT_EQ(attr_of(h2, "data-skipped=", "data-skipped"), "2");
}

TEST(Report, CountsPointsPerSeries) {
  // 20 steps; eval every 5 steps; loss null (a NaN or inf, as nlohmann writes it) at steps 7 and 9.
  std::string text = header_line("r", 0);
  for (int s = 1; s <= 20; ++s) {
    std::string eval = s % 5 == 0 ? ", \"eval_loss\": " + std::to_string(2.0 - s * 0.01) + ", \"eval_accuracy\": 0.7" : "";
    if (s == 7 || s == 9) {
      text += "{\"step\": " + std::to_string(s) + ", \"loss\": null, \"accuracy\": 0.5" + eval + "}\n";
    } else {
      text += step_line(s, 3.0 - s * 0.1, eval);
    }
  }
  const std::string html = render_report(data_for(text));
  EXPECT_EQ(attr_of(html, "data-series=\"loss\"", "data-points"), "18");
  EXPECT_EQ(attr_of(html, "data-series=\"eval_loss\"", "data-points"), "4");
  // Steps 7 and 9 have no loss and no eval: 18 steps have a point on the loss plot.
  EXPECT_EQ(attr_of(html, "data-metric=\"loss\"", "data-points"), "18");
  EXPECT_EQ(attr_of(html, "data-series=\"accuracy\"", "data-points"), "20");
  EXPECT_EQ(attr_of(html, "data-series=\"eval_accuracy\"", "data-points"), "4");
  EXPECT_EQ(attr_of(html, "data-metric=\"accuracy\"", "data-points"), "20");
  EXPECT_EQ(attr_of(html, "data-series=\"lr\"", "data-points"), "18");
  // The polyline holds as many vertices as it says.
  const std::string pts = attr_of(html, "data-series=\"eval_loss\"", "points");
  EXPECT_EQ(count(pts, ",") , 4u) << pts;
  EXPECT_NE(html.find("2 non-finite values (NaN or infinity, written as null) not drawn: loss 2"), std::string::npos);

  // A long series is drawn through at most kMaxVertices vertices, and still counts every point.
  std::string big = header_line("r", 0);
  for (int s = 1; s <= 20000; ++s) big += "{\"step\": " + std::to_string(s) + ", \"loss\": " + std::to_string(s % 97) + "}\n";
  const std::string hb = render_report(data_for(big));
  EXPECT_EQ(attr_of(hb, "data-series=\"loss\"", "data-points"), "20000");
  const std::string drawn = attr_of(hb, "data-series=\"loss\"", "data-drawn");
  EXPECT_LE(std::stoul(drawn), kMaxVertices);
  EXPECT_EQ(count(attr_of(hb, "data-series=\"loss\"", "points"), ","), std::stoul(drawn));
}

TEST(Report, EscapesHtml) {
  EXPECT_EQ(escape_html("<a href='x'>&\"</a>"), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;");
  const std::string evil = "<script>alert(1)</script>";
  std::string text = "{\"run_id\": \"" + evil + "\", \"start_step\": 0, \"partition\": \"a&b\", " +
                     "\"time\": \"\\\"><img src=x>\"}\n" + step_line(1, 1.0) + "{\"step\": 2, \"lo<b>";
  ReportData d = data_for(text);
  d.run_dir = "/runs/<b>&co";
  d.model = "preset <i>";
  d.warnings.push_back("warning with <tag>");
  CheckpointRow row;
  row.step = 4;
  row.dir = "step-00000004";
  row.verified = true;
  row.status = "cannot read 'x<y>.h5': \"bad\" & worse";
  d.checkpoints.push_back(row);
  const std::string html = render_report(d);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("<img"), std::string::npos);
  EXPECT_EQ(html.find("<b>"), std::string::npos);
  EXPECT_EQ(html.find("<i>"), std::string::npos);
  EXPECT_EQ(html.find("<tag>"), std::string::npos);
  EXPECT_NE(html.find("&lt;script&gt;alert(1)&lt;/script&gt;"), std::string::npos);
  EXPECT_NE(html.find("/runs/&lt;b&gt;&amp;co"), std::string::npos);
  EXPECT_NE(html.find("a&amp;b"), std::string::npos);
  EXPECT_NE(html.find("cannot read &#39;x&lt;y&gt;.h5&#39;: &quot;bad&quot; &amp; worse"), std::string::npos);
  EXPECT_NE(html.find("&quot;&gt;&lt;img src=x&gt;"), std::string::npos);
  EXPECT_NE(html.find("line 3 is cut short"), std::string::npos);
}

TEST(Report, TicksAreRoundAndLabelsDistinct) {
  EXPECT_EQ(nice_ticks(0, 1, 5).size(), 6u);
  EXPECT_EQ(tick_labels(nice_ticks(0, 1, 5)), (std::vector<std::string>{"0.0", "0.2", "0.4", "0.6", "0.8", "1.0"}));
  EXPECT_EQ(tick_labels(nice_ticks(1, 12, 8, true)), (std::vector<std::string>{"2", "4", "6", "8", "10", "12"}));
  EXPECT_EQ(tick_labels({0.000998, 0.000999, 0.001}), (std::vector<std::string>{"0.000998", "0.000999", "0.001"}));
  EXPECT_EQ(tick_labels(nice_ticks(0, 2e-4, 4)).back(), "0.0002");
  EXPECT_EQ(tick_labels(nice_ticks(8600, 9100, 5)), (std::vector<std::string>{"8600", "8700", "8800", "8900", "9000", "9100"}));
  EXPECT_EQ(tick_labels(nice_ticks(0, 0.001, 5)).back(), "0.0010");
  EXPECT_EQ(tick_labels(nice_ticks(0, 3e7, 3)), (std::vector<std::string>{"0", "1e+07", "2e+07", "3e+07"}));
  EXPECT_EQ(nice_ticks(3, 3, 5).size(), 1u);  // degenerate range: no endless loop
}

class ReportRun : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::temp_dir("report"); }
  void TearDown() override { test::remove_tree(dir_); }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  void write(const std::string& name, const std::string& text) const { std::ofstream(path(name)) << text; }
  std::string dir_;
};

TEST_F(ReportRun, LocatesMetrics) {
  std::vector<std::string> w;
  nlohmann::ordered_json train = {{"step", 4}};
  EXPECT_EQ(locate_metrics(dir_, train, "/else/m.jsonl", w), "/else/m.jsonl");
  EXPECT_EQ(locate_metrics(dir_, train, "", w), "");
  ASSERT_EQ(w.size(), 1u);
  EXPECT_NE(w[0].find("no metrics file"), std::string::npos);
  write("metrics.jsonl", header_line("r", 0));
  w.clear();
  EXPECT_EQ(locate_metrics(dir_, train, "", w), path("metrics.jsonl"));
  // The training state's entry wins, relative to the run directory; a stale one falls back.
  write("logs.jsonl", header_line("r", 0));
  train["metrics"] = "logs.jsonl";
  EXPECT_EQ(locate_metrics(dir_, train, "", w), path("logs.jsonl"));
  EXPECT_TRUE(w.empty());
  train["metrics"] = path("gone.jsonl");
  EXPECT_EQ(locate_metrics(dir_, train, "", w), path("metrics.jsonl"));
  ASSERT_EQ(w.size(), 1u);
  EXPECT_NE(w[0].find("gone.jsonl"), std::string::npos);
}

TEST_F(ReportRun, ListsCheckpointsWithVerifyStatus) {
  // A seed checkpoint (step 0) and a metrics file; then the same root with its shard cut short.
  pp::InitOptions init;
  init.out = path("r");
  init.preset = "tiny";
  init.pp = 2;
  pp::init_checkpoint(init);
  std::string text = header_line("r", 0);
  for (int s = 1; s <= 3; ++s) text += step_line(s, 1.0);
  write("r/metrics.jsonl", text);
  ReportOptions o;
  o.run_dir = path("r");
  const ReportResult r = write_report(o);
  EXPECT_EQ(r.out, path("r/report.html"));
  ASSERT_EQ(r.data.checkpoints.size(), 1u);
  const CheckpointRow& row = r.data.checkpoints[0];
  EXPECT_EQ(row.step, 0);
  EXPECT_EQ(row.dir, "step-00000000");
  EXPECT_TRUE(row.latest);
  EXPECT_TRUE(row.ok);
  EXPECT_EQ(row.status, "ok");
  EXPECT_GT(row.bytes, 1000);
  EXPECT_GT(row.tensors, 5);
  EXPECT_NE(r.data.model.find("preset tiny"), std::string::npos) << r.data.model;
  EXPECT_EQ(r.data.metrics.steps.size(), 3u);
  EXPECT_EQ(r.plots, 6u);
  const std::string html = fs::read_file(r.out);
  EXPECT_EQ(attr_of(html, "class=\"ckpt\"", "data-verify"), "ok");

  // A shard cut in half: the row says what verification found, the page is still written.
  const std::string step = path("r/step-00000000");
  std::string shard;
  for (const auto& name : fs::list_dir(step)) {
    if (name.find(".h5") != std::string::npos) shard = fs::join(step, name);
  }
  ASSERT_FALSE(shard.empty());
  ASSERT_EQ(::truncate(shard.c_str(), fs::file_size(shard) / 2), 0);
  const ReportResult bad = write_report(o);
  ASSERT_EQ(bad.data.checkpoints.size(), 1u);
  EXPECT_FALSE(bad.data.checkpoints[0].ok);
  EXPECT_NE(bad.data.checkpoints[0].status, "ok");
  EXPECT_EQ(bad.data.checkpoints[0].status.find('\n'), std::string::npos);
  EXPECT_EQ(attr_of(fs::read_file(bad.out), "class=\"ckpt\"", "data-verify"), "failed");

  // Not verified on request.
  o.verify = false;
  EXPECT_EQ(collect_report(o).checkpoints[0].status, "not verified");
}

TEST_F(ReportRun, RefusesWhatIsNotARunDirectory) {
  ReportOptions o;
  o.run_dir = path("missing");
  PMAMBA_EXPECT_THROW_WITH(collect_report(o), ckpt::UsageError, "is not a directory");
  fs::make_dirs(path("empty"));
  o.run_dir = path("empty");
  PMAMBA_EXPECT_THROW_WITH(collect_report(o), ckpt::FormatError, "no committed checkpoint and no metrics.jsonl");
  fs::make_dirs(path("step"));
  write("step/manifest.json", "{}");
  o.run_dir = path("step");
  PMAMBA_EXPECT_THROW_WITH(collect_report(o), ckpt::UsageError, "is a step directory");
  // A malformed metrics file fails the report, naming the file and line.
  write("empty/metrics.jsonl", header_line("r", 0) + "{oops}\n" + step_line(1, 1.0));
  o.run_dir = path("empty");
  PMAMBA_EXPECT_THROW_WITH(collect_report(o), MetricsError, "metrics.jsonl' line 2");
  // Metrics alone (no checkpoint) still make a page.
  write("empty/metrics.jsonl", header_line("r", 0) + step_line(1, 1.0));
  EXPECT_TRUE(collect_report(o).checkpoints.empty());
}

}  // namespace
}  // namespace pmamba::report
