// pmamba-ckpt diff: compares two checkpoints FQN by FQN, whatever their PP layouts. By default
// tensors whose recorded digests match count as equal without being read (the report says so);
// the others are read (one at a time) and described: max abs / rel difference, max ULP
// distance, first differing index, counts. With `decode` every tensor is read (and its digest
// checked) and compared byte by byte.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace pmamba::ckpt {

struct DiffOptions {
  bool tolerance = false;  // --atol/--rtol given: |a-b| <= atol + rtol*|b| counts as equal
  double atol = 0;
  double rtol = 0;
  bool params_only = false;  // skip optimizer state
  bool decode = false;       // read and compare every tensor, not only those whose digests differ
  int threads = 0;
};

struct TensorDiff {
  std::string fqn;
  std::string slot;
  std::string status;  // equal | within_tolerance | different | shape_mismatch | dtype_mismatch
  std::vector<int64_t> shape_a, shape_b;
  std::string dtype_a, dtype_b;
  int64_t numel = 0;
  int64_t differing = 0;          // elements whose bytes differ
  int64_t beyond_tolerance = 0;   // elements outside atol + rtol*|b| (tolerance mode)
  int64_t nan_mismatch = 0;       // elements that are NaN in exactly one of the two
  double max_abs = 0, max_rel = 0;
  double max_ulp = 0;
  std::vector<int64_t> first_index;  // of the first differing element
  double first_a = 0, first_b = 0;
};

/// One model-config field that differs: its flattened name (`d_model`, `ssm_cfg.d_state`) and
/// both values as text (a string as it is, other values as JSON; "(absent)" on the side that
/// lacks the field).
struct ConfigDifference {
  std::string field;
  std::string a, b;
};

struct DiffReport {
  std::string a, b;   // resolved step directories
  int64_t step_a = 0, step_b = 0;
  bool config_equal = true;
  std::vector<ConfigDifference> config_differences;  // the fields, when the configs differ
  std::vector<std::string> only_in_a, only_in_b;  // "fqn" or "fqn:slot"
  std::vector<TensorDiff> tensors;                // every compared slot
  int64_t equal_by_digest = 0;   // equal digests, not read
  int64_t decoded = 0;           // compared from decoded bytes
  bool decode = false;           // how it compared: every tensor decoded, or digests first
  std::vector<std::string> train_differences;     // informational
  bool equal() const;
};

/// Throws FormatError when either side is not a readable committed checkpoint (or, with
/// `decode`, a tensor's bytes do not match its digest), UsageError for a negative or
/// non-finite tolerance.
DiffReport diff_checkpoints(const std::string& a, const std::string& b, const DiffOptions& options);

/// Human-readable: the config fields that differ ("config: d_model 64 vs 128"), then the `top`
/// tensors that differ most (layout or dtype mismatches and NaN mismatches first, then by max
/// |a-b|, largest first; 0 = all), a count of the rest, and a verdict. JSON: one object, its
/// tensors in FQN order.
void print_diff(const DiffReport& report, std::ostream& out, bool json, bool verbose, int64_t top = 10);

}  // namespace pmamba::ckpt
