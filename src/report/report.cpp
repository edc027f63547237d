#include "src/report/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>

#include "src/ckpt/checkpoint.h"
#include "src/ckpt/errors.h"
#include "src/ckpt/format.h"
#include "src/ckpt/fs.h"
#include "src/ckpt/manifest.h"
#include "src/ckpt/verify.h"
#include "src/model/config.h"
#include "src/model/fqn.h"
#include "src/model/partition.h"

namespace pmamba::report {
namespace {

namespace fs = ckpt::fs;
using ojson = nlohmann::ordered_json;

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

std::string with_commas(int64_t v) {
  std::string digits = std::to_string(v < 0 ? -v : v);
  for (int i = static_cast<int>(digits.size()) - 3; i > 0; i -= 3) digits.insert(static_cast<size_t>(i), ",");
  return (v < 0 ? "-" : "") + digits;
}

std::string human_bytes(int64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

// What one plot draws: a metric and the keys of its series.
struct PlotSpec {
  const char* metric;
  const char* title;
  std::vector<std::pair<const char*, const char*>> series;  // (key, legend label)
};

const std::vector<PlotSpec>& plot_specs() {
  static const std::vector<PlotSpec> specs = {
      {"loss", "Loss", {{"loss", "training loss"}, {"eval_loss", "eval loss"}}},
      {"accuracy", "Accuracy", {{"accuracy", "training accuracy"}, {"eval_accuracy", "eval accuracy"}}},
      {"lr", "Learning rate", {{"lr", "lr"}}},
      {"grad_norm", "Gradient norm", {{"grad_norm", "grad_norm"}}},
      {"tokens_per_s", "Throughput (tokens/s)", {{"tokens_per_s", "tokens_per_s"}}},
      {"bubble", "Pipeline bubble", {{"bubble", "bubble"}}},
  };
  return specs;
}

const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd"};

// The sum of the sizes of the regular files in a step directory (it holds no subdirectories).
int64_t dir_bytes(const std::string& dir) {
  int64_t total = 0;
  for (const auto& name : fs::list_dir(dir)) {
    const std::string p = fs::join(dir, name);
    if (fs::is_file(p)) total += std::max<int64_t>(0, fs::file_size(p));
  }
  return total;
}

std::string model_summary(const model::MambaConfig& c) {
  std::string preset;
  for (const auto& name : model::preset_names()) {
    try {
      if (model::preset(name) == c) {
        preset = name;
        break;
      }
    } catch (const std::exception&) {
    }
  }
  std::string s = preset.empty() ? "custom config: " : "preset " + preset + ": ";
  s += model::describe(c);
  try {
    s += "; " + with_commas(model::count_parameters(c)) + " parameters";
  } catch (const std::exception&) {
  }
  return s;
}

std::string layout_summary(const ckpt::Manifest& m) {
  std::string s = "PP " + std::to_string(m.stages.size()) + " (layers per stage " +
                  model::partition_string(m.stage_specs()) + ")";
  size_t files = 0;
  for (const auto& st : m.stages) files = std::max(files, st.files.size());
  if (files > 1) s += ", " + std::to_string(files) + " files per stage";
  return s;
}

std::string header_value(const ojson& h, const char* key) {
  auto it = h.find(key);
  if (it == h.end() || it->is_null()) return "";
  return it->is_string() ? it->get<std::string>() : it->dump(-1, ' ', false, ojson::error_handler_t::replace);
}

const char* kStyle = R"css(
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       margin: 24px auto; max-width: 940px; padding: 0 16px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; word-break: break-all; }
h2 { font-size: 16px; margin: 28px 0 6px; }
p.sub { margin: 2px 0; color: #444; }
code { font: 12.5px ui-monospace, Menlo, Consolas, monospace; word-break: break-all; }
ul.warnings { background: #fff6e0; border: 1px solid #e8c66c; padding: 8px 8px 8px 28px; }
table { border-collapse: collapse; margin: 6px 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.ok { color: #17702a; font-weight: 600; }
td.bad { color: #b00020; }
td.skip { color: #777; }
svg.plot { display: block; max-width: 100%; height: auto; }
svg.plot .frame { fill: #fcfcfc; stroke: #999; }
svg.plot .grid { stroke: #e3e3e3; }
svg.plot text { font: 11px system-ui, Helvetica, Arial, sans-serif; fill: #333; }
svg.plot .series { stroke-width: 1.6; stroke-linejoin: round; }
svg.plot .mark { stroke: #888; stroke-dasharray: 4 3; }
p.note { margin: 0 0 4px; color: #8a5a00; font-size: 12.5px; }
)css";

}  // namespace

std::string locate_metrics(const std::string& run_dir, const ojson& train, const std::string& override_path,
                           std::vector<std::string>& warnings) {
  if (!override_path.empty()) return override_path;
  auto it = train.find("metrics");
  if (it != train.end()) {
    if (it->is_string() && !it->get<std::string>().empty()) {
      std::string p = it->get<std::string>();
      if (p.front() != '/') p = fs::join(run_dir, p);
      if (fs::exists(p)) return p;
      warnings.push_back("the newest checkpoint names the metrics file '" + p +
                         "', which does not exist; looking for metrics.jsonl in the run directory");
    } else {
      warnings.push_back("the newest checkpoint's training state has a \"metrics\" entry that is not a path: " +
                         it->dump(-1, ' ', false, ojson::error_handler_t::replace));
    }
  }
  const std::string p = fs::join(run_dir, "metrics.jsonl");
  if (fs::exists(p)) return p;
  warnings.push_back("no metrics file: '" + p +
                     "' does not exist (pmamba-train --metrics writes one; pmamba-report --metrics FILE names one)");
  return "";
}

std::vector<Plot> make_plots(const Metrics& m) {
  std::vector<Plot> plots;
  if (m.steps.empty()) return plots;
  const double x_min = static_cast<double>(m.steps.front().step);
  const double x_max = static_cast<double>(m.steps.back().step);
  std::vector<std::pair<double, std::string>> marks;
  for (size_t i = 1; i < m.runs.size(); ++i) {
    const RunHeader& h = m.runs[i];
    if (h.start_step < 0) continue;
    marks.emplace_back(static_cast<double>(h.start_step),
                       "run " + (h.run_id.empty() ? std::string("?") : h.run_id) + " resumed at step " +
                           std::to_string(h.start_step));
  }
  for (const PlotSpec& spec : plot_specs()) {
    Plot p;
    p.metric = spec.metric;
    p.title = spec.title;
    p.x_min = x_min;
    p.x_max = x_max;
    p.x_marks = marks;
    size_t color = 0;
    for (const auto& [key, label] : spec.series) {
      Series s;
      s.name = key;
      s.label = label;
      s.color = kColors[color++ % 4];
      bool present = false;
      for (const StepRecord& r : m.steps) {
        if (!r.has(key)) continue;
        present = true;
        const double v = r.get(key);
        if (std::isfinite(v)) {
          s.points.emplace_back(static_cast<double>(r.step), v);
        } else {
          ++s.non_finite;
        }
      }
      if (present) p.series.push_back(std::move(s));
    }
    if (!p.series.empty()) plots.push_back(std::move(p));
  }
  return plots;
}

ReportData collect_report(const ReportOptions& o) {
  ReportData d;
  d.run_dir = o.run_dir;
  if (!fs::is_dir(o.run_dir)) throw ckpt::UsageError("'" + o.run_dir + "' is not a directory (give a run's checkpoint root)");
  if (fs::exists(fs::join(o.run_dir, ckpt::kManifestName))) {
    throw ckpt::UsageError("'" + o.run_dir + "' is a step directory; give the run's checkpoint root ('" +
                           fs::parent(o.run_dir) + "')");
  }
  auto add_run_id = [&](const std::string& id) {
    if (!id.empty() && std::find(d.run_ids.begin(), d.run_ids.end(), id) == d.run_ids.end()) d.run_ids.push_back(id);
  };

  // The checkpoint the root resolves to: its config describes the model, its training state
  // may name the metrics file.
  const std::vector<ckpt::CommittedStep> committed = ckpt::committed_checkpoints(o.run_dir);
  std::string latest_dir;
  ojson train = ojson::object();
  if (!committed.empty()) {
    try {
      std::string note;
      latest_dir = ckpt::resolve_checkpoint_dir(o.run_dir, &note);
      if (!note.empty()) d.warnings.push_back(note);
      const std::string mpath = fs::join(latest_dir, ckpt::kManifestName);
      const ckpt::Manifest man = ckpt::manifest_from_json(fs::read_file(mpath), mpath);
      d.model = model_summary(man.config);
      d.layout = layout_summary(man);
      train = man.train;
    } catch (const ckpt::Error& e) {
      d.warnings.push_back("the newest checkpoint cannot be read: " + first_line(e.what()));
    }
  }

  d.metrics_path = locate_metrics(o.run_dir, train, o.metrics, d.warnings);
  if (!d.metrics_path.empty()) {
    d.metrics = read_metrics(d.metrics_path);
    for (const auto& h : d.metrics.runs) add_run_id(h.run_id);
    if (d.model.empty()) {
      // No readable checkpoint: the newest header's config, when the trainer wrote one.
      for (auto h = d.metrics.runs.rbegin(); h != d.metrics.runs.rend() && d.model.empty(); ++h) {
        auto c = h->json.find("config");
        if (c == h->json.end() || !c->is_object()) continue;
        try {
          d.model = model_summary(model::config_from_json(nlohmann::json::parse(c->dump())));
        } catch (const std::exception&) {
        }
      }
    }
  }
  if (d.metrics_path.empty() && committed.empty()) {
    throw ckpt::FormatError("'" + o.run_dir + "' holds no committed checkpoint and no metrics.jsonl: nothing to report");
  }

  for (const auto& c : committed) {
    CheckpointRow row;
    row.step = c.step;
    row.dir = fs::basename(c.dir);
    row.run_id = c.run_id;
    add_run_id(c.run_id);
    row.latest = !latest_dir.empty() && fs::basename(latest_dir) == row.dir;
    try {
      row.bytes = dir_bytes(c.dir);
      const std::string mpath = fs::join(c.dir, ckpt::kManifestName);
      row.tensors = static_cast<int64_t>(ckpt::manifest_from_json(fs::read_file(mpath), mpath).tensors.size());
    } catch (const ckpt::Error&) {
      // The verification below says what is wrong.
    }
    if (!o.verify) {
      row.status = "not verified";
    } else {
      row.verified = true;
      try {
        ckpt::VerifyOptions vo;
        vo.threads = o.threads;
        const ckpt::VerifyReport r = ckpt::verify_checkpoint(c.dir, vo);
        row.ok = r.ok();
        if (row.ok) {
          row.status = "ok";
        } else {
          row.status = first_line(r.problems.front());
          if (r.problems.size() > 1) row.status += " (and " + std::to_string(r.problems.size() - 1) + " more problems)";
        }
      } catch (const std::exception& e) {
        row.status = first_line(e.what());
      }
    }
    d.checkpoints.push_back(std::move(row));
  }
  return d;
}

std::string render_report(const ReportData& d) {
  const Metrics& m = d.metrics;
  std::ostringstream o;
  std::string title = d.run_ids.empty() ? "pmamba run" : d.run_ids.size() == 1 ? "pmamba run " + d.run_ids[0] : "pmamba runs ";
  if (d.run_ids.size() > 1) {
    for (size_t i = 0; i < d.run_ids.size(); ++i) title += (i ? ", " : "") + d.run_ids[i];
  }
  o << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
    << "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    << "<title>" << escape_html(title) << "</title>\n<style>" << kStyle << "</style>\n</head>\n<body>\n";
  o << "<h1>" << escape_html(title) << "</h1>\n";
  o << "<p class=\"sub\">run directory <code>" << escape_html(d.run_dir) << "</code></p>\n";
  if (!d.model.empty()) o << "<p class=\"sub model\">" << escape_html(d.model) << "</p>\n";
  if (!d.layout.empty()) o << "<p class=\"sub\">newest checkpoint: " << escape_html(d.layout) << "</p>\n";
  if (!m.steps.empty()) {
    const StepRecord& first = m.steps.front();
    const StepRecord& last = m.steps.back();
    o << "<p class=\"sub steps\" data-first-step=\"" << first.step << "\" data-last-step=\"" << last.step
      << "\">steps " << first.step << " to " << last.step << " (" << m.steps.size() << " logged)";
    if (!first.time.empty() && !last.time.empty()) {
      o << ", " << escape_html(first.time) << " to " << escape_html(last.time);
    }
    o << "</p>\n";
  } else if (!d.checkpoints.empty()) {
    o << "<p class=\"sub steps\">checkpoints at steps " << d.checkpoints.front().step << " to "
      << d.checkpoints.back().step << "</p>\n";
  }
  if (!d.metrics_path.empty()) {
    o << "<p class=\"sub\">metrics <code>" << escape_html(d.metrics_path) << "</code>: " << m.lines << " lines, "
      << m.runs.size() << (m.runs.size() == 1 ? " run header" : " run headers");
    if (m.superseded > 0) {
      o << "; " << m.superseded << " step " << (m.superseded == 1 ? "line was" : "lines were")
        << " written again by a resumed run (the later line is shown)";
    }
    o << "</p>\n";
  }
  if (!d.warnings.empty() || !m.warnings.empty()) {
    o << "<ul class=\"warnings\">\n";
    for (const auto* list : {&d.warnings, &m.warnings}) {
      for (const auto& w : *list) o << "<li>" << escape_html(w) << "</li>\n";
    }
    o << "</ul>\n";
  }

  if (!m.runs.empty()) {
    o << "<h2>Runs</h2>\n<table class=\"runs\">\n<tr><th>#</th><th>run id</th><th>start step</th><th>resumed from</th>"
         "<th>pp</th><th>dp</th><th>partition</th><th>time</th><th>steps shown</th></tr>\n";
    for (size_t i = 0; i < m.runs.size(); ++i) {
      const RunHeader& h = m.runs[i];
      int64_t lo = -1, hi = -1, n = 0;
      for (const StepRecord& r : m.steps) {
        if (r.run != static_cast<int64_t>(i)) continue;
        if (n++ == 0) lo = r.step;
        hi = r.step;
      }
      o << "<tr><td class=\"num\">" << i + 1 << "</td><td><code>" << escape_html(h.run_id) << "</code></td><td class=\"num\">"
        << (h.start_step >= 0 ? std::to_string(h.start_step) : "") << "</td><td><code>" << escape_html(h.resumed_from)
        << "</code></td><td class=\"num\">" << escape_html(header_value(h.json, "pp")) << "</td><td class=\"num\">"
        << escape_html(header_value(h.json, "dp")) << "</td><td>" << escape_html(header_value(h.json, "partition"))
        << "</td><td>" << escape_html(header_value(h.json, "time")) << "</td><td>"
        << (n == 0 ? std::string("none") : std::to_string(lo) + " to " + std::to_string(hi) + " (" + std::to_string(n) + ")")
        << "</td></tr>\n";
    }
    o << "</table>\n";
  }

  const std::vector<Plot> plots = make_plots(m);
  for (const Plot& p : plots) {
    o << "<section class=\"plot\" id=\"plot-" << escape_html(p.metric) << "\">\n<h2>" << escape_html(p.title) << "</h2>\n";
    o << render_svg(p);
    int64_t skipped = 0;
    std::string which;
    for (const Series& s : p.series) {
      if (s.non_finite == 0) continue;
      skipped += s.non_finite;
      which += (which.empty() ? "" : ", ") + s.name + " " + std::to_string(s.non_finite);
    }
    if (skipped > 0) {
      o << "<p class=\"note\" data-skipped=\"" << skipped << "\">" << skipped << " non-finite "
        << (skipped == 1 ? "value" : "values") << " (NaN or infinity, written as null) not drawn: " << escape_html(which)
        << "</p>\n";
    }
    o << "</section>\n";
  }
  if (plots.empty() && !d.metrics_path.empty()) o << "<p>The metrics file holds no step lines to plot.</p>\n";

  o << "<h2>Checkpoints</h2>\n";
  if (d.checkpoints.empty()) {
    o << "<p>No committed checkpoint in the run directory.</p>\n";
  } else {
    const bool runs = d.run_ids.size() > 1;
    o << "<table class=\"checkpoints\">\n<tr><th>step</th><th>directory</th>" << (runs ? "<th>run</th>" : "")
      << "<th>bytes on disk</th><th>tensors</th><th>latest</th><th>verify</th></tr>\n";
    for (const CheckpointRow& r : d.checkpoints) {
      const char* cls = !r.verified ? "skip" : r.ok ? "ok" : "bad";
      o << "<tr class=\"ckpt\" data-step=\"" << r.step << "\" data-verify=\""
        << (!r.verified ? "skipped" : r.ok ? "ok" : "failed") << "\"><td class=\"num\">" << r.step << "</td><td><code>"
        << escape_html(r.dir) << "</code></td>";
      if (runs) o << "<td><code>" << escape_html(r.run_id) << "</code></td>";
      o << "<td class=\"num\">" << (r.bytes >= 0 ? with_commas(r.bytes) + " (" + human_bytes(r.bytes) + ")" : "?")
        << "</td><td class=\"num\">" << (r.tensors >= 0 ? std::to_string(r.tensors) : "?") << "</td><td>"
        << (r.latest ? "latest" : "") << "</td><td class=\"" << cls << "\">" << escape_html(r.status) << "</td></tr>\n";
    }
    o << "</table>\n";
  }
  o << "</body>\n</html>\n";
  return o.str();
}

ReportResult write_report(const ReportOptions& options) {
  ReportResult r;
  r.data = collect_report(options);
  r.out = options.out.empty() ? fs::join(options.run_dir, "report.html") : options.out;
  const std::string html = render_report(r.data);
  r.plots = make_plots(r.data.metrics).size();
  fs::write_file_atomic(r.out, html);
  return r;
}

}  // namespace pmamba::report
