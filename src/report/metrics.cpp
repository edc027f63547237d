#include "src/report/metrics.h"

#include <cstdint>
#include <map>

#include "src/ckpt/fs.h"
#include "src/report/errors.h"

namespace pmamba::report {
namespace {

using ojson = nlohmann::ordered_json;

const char* type_name(const ojson& v) {
  switch (v.type()) {
    case ojson::value_t::null: return "null";
    case ojson::value_t::object: return "an object";
    case ojson::value_t::array: return "an array";
    case ojson::value_t::string: return "a string";
    case ojson::value_t::boolean: return "a boolean";
    case ojson::value_t::number_float: return "a number";
    default: return "an integer";
  }
}

// A metrics file is ours, but it may have been cut short or edited: quote a bounded piece.
std::string excerpt(const std::string& line) { return "'" + ckpt::fs::printable(line, 60) + "'"; }

RunHeader parse_header(const ojson& j, int64_t line) {
  RunHeader h;
  h.line = line;
  h.json = j;
  auto str = [&](const char* key) {
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  h.run_id = str("run_id");
  h.resumed_from = str("resumed_from");
  auto s = j.find("start_step");
  if (s != j.end() && s->is_number_integer()) h.start_step = s->get<int64_t>();
  return h;
}

}  // namespace

const std::vector<std::string>& metric_keys() {
  static const std::vector<std::string> keys = {
      "loss",     "accuracy",    "lr",        "grad_norm",     "tokens_per_s",      "step_time_s", "bubble",
      "ckpt_time_s", "eval_loss", "eval_ppl", "eval_accuracy", "eval_bits_per_byte"};
  return keys;
}

Metrics parse_metrics(const std::string& text, const std::string& where) {
  Metrics m;
  const std::string file = "metrics file '" + where + "'";
  std::map<int64_t, StepRecord> by_step;
  size_t pos = 0;
  int64_t line_no = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const bool last = text.find_first_not_of(" \t\r\n", end) == std::string::npos;  // nothing but blanks follow
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    ++m.lines;
    const std::string at = file + " line " + std::to_string(line_no);
    ojson j;
    try {
      j = ojson::parse(line);
    } catch (const ojson::parse_error& e) {
      // A parse that ran off the end of the line read a prefix of a JSON text: on the last
      // line, that is a write cut short (the run was killed), not a corrupt file.
      if (last && e.byte > line.size()) {
        m.warnings.push_back(at + " is cut short (" + std::to_string(line.size()) +
                             " bytes, an unfinished JSON object; the run was probably killed while writing it): skipped");
        --m.lines;
        continue;
      }
      throw MetricsError(at + ": not a JSON object: " + excerpt(line));
    } catch (const ojson::exception& e) {
      throw MetricsError(at + ": " + e.what());
    }
    if (!j.is_object()) throw MetricsError(at + ": expected a JSON object, found " + type_name(j) + ": " + excerpt(line));
    auto s = j.find("step");
    if (s == j.end()) {
      m.runs.push_back(parse_header(j, line_no));
      continue;
    }
    const bool valid_step = s->is_number_unsigned() ? s->get<uint64_t>() <= uint64_t{INT64_MAX}
                                                    : s->is_number_integer() && s->get<int64_t>() >= 0;
    if (!valid_step) {
      throw MetricsError(at + ": \"step\" must be a non-negative integer, found " +
                         (s->is_number() ? s->dump() : std::string(type_name(*s))));
    }
    StepRecord r;
    r.step = s->get<int64_t>();
    r.line = line_no;
    r.run = static_cast<int64_t>(m.runs.size()) - 1;
    auto t = j.find("time");
    if (t != j.end() && t->is_string()) r.time = t->get<std::string>();
    for (const std::string& key : metric_keys()) {
      auto v = j.find(key);
      if (v == j.end()) continue;
      if (v->is_null()) {
        r.values[key] = std::numeric_limits<double>::quiet_NaN();
      } else if (v->is_number()) {
        r.values[key] = v->get<double>();
      } else {
        throw MetricsError(at + ": \"" + key + "\" must be a number or null, found " + type_name(*v));
      }
    }
    auto [it, inserted] = by_step.emplace(r.step, r);
    if (!inserted) {
      it->second = std::move(r);  // a resumed run wrote this step again: its line wins
      ++m.superseded;
    }
  }
  m.steps.reserve(by_step.size());
  for (auto& kv : by_step) m.steps.push_back(std::move(kv.second));
  return m;
}

Metrics read_metrics(const std::string& path) {
  // Bounded, regular files only (as every file the tools read whole); 2 GiB is millions of steps.
  Metrics m = parse_metrics(ckpt::fs::read_file(path, int64_t{2} << 30), path);
  m.path = path;
  return m;
}

}  // namespace pmamba::report
