// pmamba-report: one self-contained HTML page (inline CSS and SVG, no script, nothing fetched)
// about a training run directory, i.e. a checkpoint root written by pmamba-train --ckpt-dir:
// the run(s) and model, plots of the metrics against step, and a table of the committed
// checkpoints, each put through pmamba-ckpt verify's checks.
//
// The metrics file is found in this order: --metrics; the "metrics" key of the newest committed
// checkpoint's training state (a path, relative ones relative to the run directory);
// RUN_DIR/metrics.jsonl. Without one the page still lists the checkpoints.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "src/report/metrics.h"
#include "src/report/plot.h"

namespace pmamba::report {

struct ReportOptions {
  std::string run_dir;
  std::string out;      // "" = RUN_DIR/report.html
  std::string metrics;  // "" = found as the file comment says
  bool verify = true;   // run the checkpoint verification on every checkpoint
  int threads = 0;      // verification threads (0 = all cores)
};

/// One committed checkpoint of the run directory.
struct CheckpointRow {
  int64_t step = 0;
  std::string dir;        // step directory name
  std::string run_id;
  int64_t bytes = -1;     // bytes of its files on disk (-1: unknown)
  int64_t tensors = -1;   // FQNs in its manifest (-1: the manifest could not be read)
  bool latest = false;    // the checkpoint the root resolves to (what `latest` names)
  bool verified = false;  // verification ran
  bool ok = false;        // ... and found nothing wrong
  std::string status;     // "ok", "not verified", or the first line of the first problem
};

/// Everything the page shows.
struct ReportData {
  std::string run_dir;
  std::string metrics_path;  // "" when no metrics file was read
  Metrics metrics;
  std::vector<CheckpointRow> checkpoints;
  std::vector<std::string> run_ids;  // in the order first seen (headers, then checkpoints)
  std::string model;                 // one line: preset, sizes, parameters ("" when unknown)
  std::string layout;                // the newest checkpoint's PP layout ("" when none)
  std::vector<std::string> warnings;  // about the run directory (the metrics file's own are in metrics)
};

/// Where the metrics file is: `override_path` when given; else `train`'s "metrics" (relative to
/// `run_dir`) when that file exists; else RUN_DIR/metrics.jsonl when it exists; else "".
/// Why a candidate was passed over is appended to `warnings`.
std::string locate_metrics(const std::string& run_dir, const nlohmann::ordered_json& train,
                           const std::string& override_path, std::vector<std::string>& warnings);

/// The plots the page draws from these metrics (loss with eval loss, accuracy with eval
/// accuracy, lr, grad_norm, tokens_per_s, bubble), leaving out those whose keys appear on no
/// line, and series whose key appears on no line.
std::vector<Plot> make_plots(const Metrics& metrics);

/// Reads the run directory: metrics, checkpoints (verified when options.verify), model. Throws
/// ckpt::UsageError when `run_dir` is not a directory or is a step directory, MetricsError for a
/// malformed metrics file, ckpt::FormatError when there is neither a metrics file nor a
/// committed checkpoint.
ReportData collect_report(const ReportOptions& options);

/// The HTML page.
std::string render_report(const ReportData& data);

struct ReportResult {
  std::string out;  // the file written
  ReportData data;
  size_t plots = 0;
};

/// collect_report + render_report, written atomically to options.out (default RUN_DIR/report.html).
ReportResult write_report(const ReportOptions& options);

}  // namespace pmamba::report
