// Helpers shared by the C++ tests.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace pmamba::test {

/// True when both tensors have the same dtype, shape and bytes (contiguous CPU copies are
/// compared with memcmp, so -0.0 != 0.0 and NaN payloads count).
inline bool bitwise_equal(const at::Tensor& a, const at::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const at::Tensor ca = a.detach().cpu().contiguous(), cb = b.detach().cpu().contiguous();
  // An empty tensor may have no storage at all (a null data pointer memcmp must not see).
  return ca.nbytes() == 0 || std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0;
}

/// Max |a - b| in float64 (for tolerance checks and failure messages).
inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.detach().to(at::kDouble) - b.detach().to(at::kDouble)).abs().max().item<double>();
}

/// Max |a - b| / max(|b|, floor).
inline double max_rel_diff(const at::Tensor& a, const at::Tensor& b, double floor = 1e-6) {
  const at::Tensor ad = a.detach().to(at::kDouble), bd = b.detach().to(at::kDouble);
  return ((ad - bd).abs() / bd.abs().clamp_min(floor)).max().item<double>();
}

/// A fresh empty directory under the build tree's temp area, removed by the caller's fixture.
inline std::string temp_dir(const std::string& tag) {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/pmamba-" + tag + "-XXXXXX";
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed for " + tmpl);
  return tmpl;
}

inline void remove_tree(const std::string& path) {
  if (path.size() > 8) std::system(("rm -rf '" + path + "'").c_str());
}

/// Path of a committed test fixture (tests/fixtures/NAME); PMAMBA_SOURCE_DIR may override the tree.
inline std::string fixture(const std::string& name) {
  const char* src = std::getenv("PMAMBA_SOURCE_DIR");
  return std::string(src ? src : PMAMBA_TEST_SOURCE_DIR) + "/tests/fixtures/" + name;
}

/// Asserts that `stmt` throws `type` whose what() contains `needle`.
#define PMAMBA_EXPECT_THROW_WITH(stmt, type, needle)                                   \
  do {                                                                                 \
    bool pmamba_caught = false;                                                        \
    try {                                                                              \
      stmt;                                                                            \
    } catch (const type& e) {                                                          \
      pmamba_caught = true;                                                            \
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)                 \
          << "message was: " << e.what();                                              \
    }                                                                                  \
    EXPECT_TRUE(pmamba_caught) << #stmt " did not throw " #type;                       \
  } while (0)

}  // namespace pmamba::test
