// The metrics file pmamba-train --metrics writes: JSON lines, one object per line.
//
// A line without a "step" key is a run header (run_id, start_step, resumed_from, pp, dp,
// partition, maybe time, versions, config, options): every start or resume of a run appends one.
// A line with "step" holds that step's numbers (loss, accuracy, lr, grad_norm, tokens_per_s,
// step_time_s, bubble, optionally ckpt_time_s and time, and on evaluation steps eval_loss,
// eval_ppl, eval_accuracy, eval_bits_per_byte). nlohmann writes a non-finite number as null.
//
// A resumed run may repeat steps the previous run had logged after its last checkpoint (it
// crashed at step 37 after checkpoint 30, resumed from 30 and wrote 31.. again): for each step
// the last line seen wins. A run killed mid-write leaves a truncated last line: it is skipped
// with a warning; a malformed line anywhere else is an error naming the file and line.
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace pmamba::report {

/// One run header line, as written.
struct RunHeader {
  int64_t line = 0;           // 1-based line number in the file
  std::string run_id;         // "" when the header has none
  int64_t start_step = -1;    // -1 when absent
  std::string resumed_from;   // "" for a fresh run
  nlohmann::ordered_json json = nlohmann::ordered_json::object();  // the whole header
};

/// One step's numbers. A key written as null (a non-finite value) is present with NaN, so it
/// can be counted and skipped when plotted; a key that was not written is absent.
struct StepRecord {
  int64_t step = 0;
  int64_t line = 0;    // the line this record came from
  int64_t run = -1;    // index of the header it follows in Metrics::runs (-1: before any header)
  std::string time;    // "time" when written (ISO-8601), else ""
  std::map<std::string, double> values;

  /// True when `key` was written on this line (as a number or as null).
  bool has(const std::string& key) const { return values.count(key) != 0; }
  /// The value, NaN when absent or null.
  double get(const std::string& key) const {
    auto it = values.find(key);
    return it == values.end() ? std::numeric_limits<double>::quiet_NaN() : it->second;
  }
};

struct Metrics {
  std::string path;                 // where it was read from ("" when parsed from text)
  std::vector<RunHeader> runs;      // in file order
  std::vector<StepRecord> steps;    // ascending by step; for each step the last line seen
  int64_t lines = 0;                // non-empty lines read
  int64_t superseded = 0;           // step lines replaced by a later line of the same step
  std::vector<std::string> warnings;  // e.g. the truncated last line that was skipped
};

/// The numeric keys of a step line. Any other key (but "step" and "time") is ignored.
const std::vector<std::string>& metric_keys();

/// Parses the text of a metrics file; `where` names it in messages and warnings. Throws
/// MetricsError "metrics file 'WHERE' line N: ..." for a malformed line, except a last line that
/// is an unfinished JSON text (a write cut short), which becomes a warning.
Metrics parse_metrics(const std::string& text, const std::string& where);

/// Reads and parses a metrics file (a regular file; FormatError / IoError when it cannot be read).
Metrics read_metrics(const std::string& path);

}  // namespace pmamba::report
