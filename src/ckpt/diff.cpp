#include "src/ckpt/diff.h"

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "src/ckpt/checkpoint.h"
#include "src/ckpt/errors.h"
#include "src/ckpt/resources.h"
#include "src/ckpt/text.h"
#include "src/model/fqn.h"

namespace pmamba::ckpt {

bool DiffReport::equal() const {
  if (!config_equal || !only_in_a.empty() || !only_in_b.empty()) return false;
  for (const auto& t : tensors) {
    if (t.status != "equal" && t.status != "within_tolerance") return false;
  }
  return true;
}

namespace {

// Maps a float's bits to an integer that orders like the float, so that the distance between
// two mapped values counts the representable numbers between them (ULPs).
template <typename Bits>
int64_t ordered(Bits bits) {
  using Signed = std::make_signed_t<Bits>;
  const Signed s = static_cast<Signed>(bits);
  const int64_t v = static_cast<int64_t>(s);
  return v < 0 ? static_cast<int64_t>(std::numeric_limits<Signed>::min()) - v : v;
}

template <typename T>
double to_double(T v) {
  return static_cast<double>(v);
}

template <typename T>
double ulp_distance(T a, T b) {
  if constexpr (std::is_same_v<T, float>) {
    uint32_t x, y;
    std::memcpy(&x, &a, 4);
    std::memcpy(&y, &b, 4);
    return std::fabs(static_cast<double>(ordered(x)) - static_cast<double>(ordered(y)));
  } else if constexpr (std::is_same_v<T, double>) {
    uint64_t x, y;
    std::memcpy(&x, &a, 8);
    std::memcpy(&y, &b, 8);
    const int64_t ox = ordered(x), oy = ordered(y);
    return static_cast<double>(static_cast<long double>(ox) - static_cast<long double>(oy) < 0
                                   ? static_cast<long double>(oy) - ox
                                   : static_cast<long double>(ox) - oy);
  } else if constexpr (std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>) {
    return std::fabs(static_cast<double>(ordered(a.x)) - static_cast<double>(ordered(b.x)));
  } else {
    return std::fabs(static_cast<double>(a) - static_cast<double>(b));  // integers: the difference
  }
}

template <typename T>
void compare_typed(const at::Tensor& a, const at::Tensor& b, const DiffOptions& o, TensorDiff& d) {
  const T* pa = a.data_ptr<T>();
  const T* pb = b.data_ptr<T>();
  const int64_t n = a.numel();
  int64_t first = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (std::memcmp(&pa[i], &pb[i], sizeof(T)) == 0) continue;
    ++d.differing;
    if (first < 0) first = i;
    const double x = to_double(pa[i]), y = to_double(pb[i]);
    if (std::isnan(x) || std::isnan(y)) {
      if (std::isnan(x) != std::isnan(y)) ++d.nan_mismatch;
      if (std::isnan(x) != std::isnan(y)) ++d.beyond_tolerance;
      continue;
    }
    const double diff = std::fabs(x - y);
    if (!(diff <= d.max_abs)) d.max_abs = diff;  // also takes inf
    const double rel = diff / std::max(std::fabs(y), std::numeric_limits<double>::min());
    if (!(rel <= d.max_rel)) d.max_rel = rel;
    d.max_ulp = std::max(d.max_ulp, ulp_distance(pa[i], pb[i]));
    if (!(diff <= o.atol + o.rtol * std::fabs(y))) ++d.beyond_tolerance;
  }
  if (first >= 0) {
    d.first_a = to_double(pa[first]);
    d.first_b = to_double(pb[first]);
    d.first_index.assign(d.shape_a.size(), 0);
    int64_t rest = first;
    for (size_t k = d.shape_a.size(); k-- > 0;) {
      d.first_index[k] = rest % d.shape_a[k];
      rest /= d.shape_a[k];
    }
  }
}

// The flattened config fields whose values differ, in a's order, then those only b has.
std::vector<ConfigDifference> config_differences(const model::MambaConfig& a, const model::MambaConfig& b) {
  const auto rows = [](const model::MambaConfig& c) {
    return flatten_json(nlohmann::ordered_json::parse(model::config_to_json_string(c)));
  };
  const auto ra = rows(a), rb = rows(b);
  const std::map<std::string, std::string> mb(rb.begin(), rb.end());
  std::set<std::string> seen;
  std::vector<ConfigDifference> out;
  for (const auto& [k, v] : ra) {
    seen.insert(k);
    auto it = mb.find(k);
    if (it == mb.end()) out.push_back({k, v, "(absent)"});
    else if (it->second != v) out.push_back({k, v, it->second});
  }
  for (const auto& [k, v] : rb) {
    if (!seen.count(k)) out.push_back({k, "(absent)", v});
  }
  return out;
}

void compare(const at::Tensor& a, const at::Tensor& b, const DiffOptions& o, TensorDiff& d) {
  switch (a.scalar_type()) {
    case at::kFloat: compare_typed<float>(a, b, o, d); break;
    case at::kDouble: compare_typed<double>(a, b, o, d); break;
    case at::kBFloat16: compare_typed<c10::BFloat16>(a, b, o, d); break;
    case at::kHalf: compare_typed<c10::Half>(a, b, o, d); break;
    case at::kLong: compare_typed<int64_t>(a, b, o, d); break;
    case at::kInt: compare_typed<int32_t>(a, b, o, d); break;
    default: break;
  }
  if (d.differing == 0) d.status = "equal";
  else if (o.tolerance && d.beyond_tolerance == 0) d.status = "within_tolerance";
  else d.status = "different";
}

}  // namespace

DiffReport diff_checkpoints(const std::string& pa, const std::string& pb, const DiffOptions& o) {
  for (const auto& [name, v] : {std::pair<const char*, double>{"--atol", o.atol}, {"--rtol", o.rtol}}) {
    if (!std::isfinite(v) || v < 0) {
      throw UsageError(std::string(name) + " must be a finite number >= 0, found " + std::to_string(v));
    }
  }
  check_threads(o.threads);
  CheckpointReader ra(pa, o.threads), rb(pb, o.threads);
  const Manifest &ma = ra.manifest(), &mb = rb.manifest();
  DiffReport r;
  r.decode = o.decode;
  r.a = ra.dir();
  r.b = rb.dir();
  r.step_a = ma.step;
  r.step_b = mb.step;
  r.config_equal = ma.config == mb.config;
  if (!r.config_equal) r.config_differences = config_differences(ma.config, mb.config);
  for (auto it = ma.train.begin(); it != ma.train.end(); ++it) {
    if (!mb.train.contains(it.key()) || mb.train.at(it.key()) != it.value()) r.train_differences.push_back(it.key());
  }
  for (auto it = mb.train.begin(); it != mb.train.end(); ++it) {
    if (!ma.train.contains(it.key())) r.train_differences.push_back(it.key());
  }
  const Slot slots[] = {Slot::kParam, Slot::kExpAvg, Slot::kExpAvgSq, Slot::kStep};
  std::set<std::string> in_b;
  for (const auto& t : mb.tensors) in_b.insert(t.fqn);
  for (const auto& ta : ma.tensors) {
    if (!in_b.count(ta.fqn)) {
      r.only_in_a.push_back(ta.fqn);
      continue;
    }
    // Compare the logical tensors: a tied alias stands for the tensor it aliases.
    const TensorEntry& ea = ma.resolve(ta.fqn);
    const TensorEntry& eb = mb.resolve(ta.fqn);
    for (Slot s : slots) {
      if (o.params_only && s != Slot::kParam) continue;
      auto sa = ea.slots.find(s), sb = eb.slots.find(s);
      const std::string name = ta.fqn + ":" + slot_name(s);
      if (sa == ea.slots.end() && sb == eb.slots.end()) continue;
      if (sb == eb.slots.end()) {
        r.only_in_a.push_back(name);
        continue;
      }
      if (sa == ea.slots.end()) {
        r.only_in_b.push_back(name);
        continue;
      }
      TensorDiff d;
      d.fqn = ta.fqn;
      d.slot = slot_name(s);
      d.shape_a = sa->second.shape;
      d.shape_b = sb->second.shape;
      d.dtype_a = sa->second.dtype;
      d.dtype_b = sb->second.dtype;
      d.numel = sa->second.raw_bytes / static_cast<int64_t>(std::max<size_t>(1, dtype_size(dtype_from_name(d.dtype_a))));
      if (d.shape_a != d.shape_b) {
        d.status = "shape_mismatch";
      } else if (d.dtype_a != d.dtype_b) {
        d.status = "dtype_mismatch";
      } else if (sa->second.digest == sb->second.digest && !o.decode) {
        d.status = "equal";
        ++r.equal_by_digest;
      } else {
        const at::Tensor a = ra.read(ta.fqn, s), b = rb.read(ta.fqn, s);  // digests checked
        compare(a, b, o, d);
        ++r.decoded;
      }
      r.tensors.push_back(std::move(d));
    }
  }
  std::set<std::string> in_a;
  for (const auto& t : ma.tensors) in_a.insert(t.fqn);
  for (const auto& t : mb.tensors) {
    if (!in_a.count(t.fqn)) r.only_in_b.push_back(t.fqn);
  }
  return r;
}

namespace {

std::string vec_text(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// How far apart a tensor's two sides are, for the order of the report: a layout, dtype or NaN
// mismatch is the farthest, then the largest absolute difference.
double magnitude(const TensorDiff& t) {
  if (t.status == "shape_mismatch" || t.status == "dtype_mismatch" || t.nan_mismatch > 0) {
    return std::numeric_limits<double>::infinity();
  }
  return t.max_abs;
}

}  // namespace

void print_diff(const DiffReport& r, std::ostream& out, bool json, bool verbose, int64_t top) {
  int64_t equal = 0, within = 0, different = 0;
  for (const auto& t : r.tensors) {
    if (t.status == "equal") ++equal;
    else if (t.status == "within_tolerance") ++within;
    else ++different;
  }
  if (json) {
    nlohmann::ordered_json j;
    j["a"] = r.a;
    j["b"] = r.b;
    j["equal"] = r.equal();
    j["step_a"] = r.step_a;
    j["step_b"] = r.step_b;
    j["config_equal"] = r.config_equal;
    j["config_differences"] = nlohmann::ordered_json::array();
    for (const auto& c : r.config_differences) {
      j["config_differences"].push_back(nlohmann::ordered_json{{"field", c.field}, {"a", c.a}, {"b", c.b}});
    }
    j["compared"] = r.tensors.size();
    j["equal_tensors"] = equal;
    j["equal_by_digest"] = r.equal_by_digest;
    j["decoded"] = r.decoded;
    j["method"] = r.decode ? "decoded" : "digest";
    j["within_tolerance"] = within;
    j["different"] = different;
    j["only_in_a"] = r.only_in_a;
    j["only_in_b"] = r.only_in_b;
    j["train_differences"] = r.train_differences;
    nlohmann::ordered_json rows = nlohmann::ordered_json::array();
    for (const auto& t : r.tensors) {
      if (t.status == "equal" && !verbose) continue;
      nlohmann::ordered_json x{{"fqn", t.fqn}, {"slot", t.slot}, {"status", t.status}};
      if (t.status == "shape_mismatch") {
        x["shape_a"] = t.shape_a;
        x["shape_b"] = t.shape_b;
      } else if (t.status == "dtype_mismatch") {
        x["dtype_a"] = t.dtype_a;
        x["dtype_b"] = t.dtype_b;
      } else if (t.status != "equal") {
        x["numel"] = t.numel;
        x["differing"] = t.differing;
        x["beyond_tolerance"] = t.beyond_tolerance;
        x["nan_mismatch"] = t.nan_mismatch;
        x["max_abs_diff"] = t.max_abs;
        x["max_rel_diff"] = t.max_rel;
        x["max_ulp"] = t.max_ulp;
        x["first_index"] = t.first_index;
        x["first_a"] = t.first_a;
        x["first_b"] = t.first_b;
      }
      rows.push_back(x);
    }
    j["tensors"] = rows;
    out << j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
    return;
  }
  out << "a: " << r.a << " (step " << r.step_a << ")\n";
  out << "b: " << r.b << " (step " << r.step_b << ")\n";
  if (!r.config_equal && r.config_differences.empty()) out << "config differs\n";
  for (const auto& c : r.config_differences) out << "config: " << c.field << " " << c.a << " vs " << c.b << "\n";
  for (const auto& f : r.only_in_a) out << "only in a: " << f << "\n";
  for (const auto& f : r.only_in_b) out << "only in b: " << f << "\n";
  std::vector<const TensorDiff*> differing;
  for (const auto& t : r.tensors) {
    if (t.status != "equal") differing.push_back(&t);
  }
  std::stable_sort(differing.begin(), differing.end(),
                   [](const TensorDiff* x, const TensorDiff* y) { return magnitude(*x) > magnitude(*y); });
  const size_t shown = top > 0 ? std::min(differing.size(), static_cast<size_t>(top)) : differing.size();
  for (size_t i = 0; i < shown; ++i) {
    const TensorDiff& t = *differing[i];
    const std::string name = t.fqn + (t.slot == "param" ? "" : ":" + t.slot);
    if (t.status == "shape_mismatch") {
      out << "shape      " << name << ": " << vec_text(t.shape_a) << " vs " << vec_text(t.shape_b) << "\n";
    } else if (t.status == "dtype_mismatch") {
      out << "dtype      " << name << ": " << t.dtype_a << " vs " << t.dtype_b << "\n";
    } else {
      out << (t.status == "different" ? "different  " : "within tol ") << name << ": " << t.differing << " of "
          << t.numel << " elements differ, max abs " << format_float(t.max_abs) << ", max rel " << format_float(t.max_rel)
          << ", max ulp " << format_float(t.max_ulp) << ", first at " << vec_text(t.first_index) << " ("
          << format_float(t.first_a) << " vs " << format_float(t.first_b) << ")";
      if (t.nan_mismatch) out << ", " << t.nan_mismatch << " NaN mismatches";
      out << "\n";
    }
  }
  if (shown < differing.size()) {
    const TensorDiff& next = *differing[shown];
    out << "... and " << (differing.size() - shown) << " more differing tensor" << (differing.size() - shown == 1 ? "" : "s");
    if (std::isfinite(magnitude(next))) out << ", max abs " << format_float(next.max_abs) << " or less";
    out << " (--top 0 lists all)\n";
  }
  if (verbose) {
    for (const auto& t : r.tensors) {
      if (t.status == "equal") out << "equal      " << t.fqn << (t.slot == "param" ? "" : ":" + t.slot) << "\n";
    }
  }
  if (!r.train_differences.empty()) {
    out << "note: training state differs in";
    for (const auto& k : r.train_differences) out << " " << k;
    out << "\n";
  }
  out << (r.decode ? "compared: every tensor decoded and compared byte by byte (digests checked)\n"
                   : "compared: recorded xxh3-64 digests; equal digests count as equal tensors without being read "
                     "(--decode reads and compares every tensor)\n");
  out << (r.equal() ? "EQUAL" : "DIFFERENT") << ": " << r.tensors.size() << " tensors compared, " << equal
      << " equal (" << r.equal_by_digest << " by digest), " << within << " within tolerance, " << different
      << " different, " << (r.only_in_a.size() + r.only_in_b.size()) << " missing\n";
}

}  // namespace pmamba::ckpt
