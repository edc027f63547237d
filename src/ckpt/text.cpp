#include "src/ckpt/text.h"

#include <algorithm>
#include <cstdio>

namespace pmamba::ckpt {

std::string with_commas(int64_t v) {
  const bool negative = v < 0;
  // Digits of |v| (through unsigned, so INT64_MIN has a magnitude too).
  const std::string s = std::to_string(negative ? 0 - static_cast<uint64_t>(v) : static_cast<uint64_t>(v));
  std::string out = negative ? "-" : "";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

std::string format_bytes(int64_t n) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 6) {
    v /= 1024;
    ++u;
  }
  char buf[64];
  if (u == 0) {
    std::snprintf(buf, sizeof buf, "%lld B", static_cast<long long>(n));
  } else {
    std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
  }
  return buf;
}

std::string format_bytes_exact(int64_t n) { return with_commas(n) + " bytes (" + format_bytes(n) + ")"; }

std::string format_float(double v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string format_ratio(double v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.2fx", v);
  return buf;
}

namespace {

void flatten_into(const nlohmann::ordered_json& j, const std::string& prefix,
                  std::vector<std::pair<std::string, std::string>>& out) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
    const auto& v = it.value();
    if (v.is_object() && !v.empty()) {
      flatten_into(v, key, out);
    } else if (v.is_string() && !v.get<std::string>().empty()) {
      out.emplace_back(key, v.get<std::string>());
    } else {
      out.emplace_back(key, v.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace));
    }
  }
}

}  // namespace

std::vector<std::pair<std::string, std::string>> flatten_json(const nlohmann::ordered_json& j) {
  std::vector<std::pair<std::string, std::string>> out;
  if (j.is_object()) flatten_into(j, "", out);
  return out;
}

std::string two_column_table(const std::vector<std::pair<std::string, std::string>>& rows, const std::string& indent) {
  size_t width = 0;
  for (const auto& r : rows) width = std::max(width, r.first.size());
  std::string out;
  for (const auto& r : rows) {
    out += indent + r.first + std::string(width - r.first.size() + 2, ' ') + r.second + "\n";
  }
  return out;
}

}  // namespace pmamba::ckpt
