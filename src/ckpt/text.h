// How pmamba-ckpt's reports (info, ls, verify, diff) print numbers and JSON values, so that a
// byte count, a ratio or a float reads the same in every subcommand: exact byte counts with
// thousands separators next to a binary-unit size ("1,664,000 bytes (1.6 MiB)"), ratios as
// "3.21x", floats as printf's %.6g.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace pmamba::ckpt {

/// 1234567 -> "1,234,567".
std::string with_commas(int64_t v);

/// A size in binary units with one decimal: 812 -> "812 B", 1664000 -> "1.6 MiB",
/// 2^40 -> "1.0 TiB". (resources.h's bytes_text puts the exact count in front.)
std::string format_bytes(int64_t n);

/// "1,664,000 bytes (1.6 MiB)": the exact count, then format_bytes.
std::string format_bytes_exact(int64_t n);

/// A measured float (a difference, a tolerance, a value): printf "%.6g" ("0.00123", "1e-08").
std::string format_float(double v);

/// A ratio (compression): "%.2fx" ("3.21x").
std::string format_ratio(double v);

/// Rows of (key, value) for a JSON object, nested objects flattened with dots
/// ({"data": {"seq_len": 64}} -> ("data.seq_len", "64")). A non-empty string value is given as
/// it is, any other value (numbers, booleans, arrays, an empty object, "") as compact JSON. Keys
/// keep the object's order.
std::vector<std::pair<std::string, std::string>> flatten_json(const nlohmann::ordered_json& j);

/// The rows as an aligned two-column table, each line starting with `indent`.
std::string two_column_table(const std::vector<std::pair<std::string, std::string>>& rows, const std::string& indent);

}  // namespace pmamba::ckpt
