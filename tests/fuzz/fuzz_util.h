// Shared pieces of the libFuzzer targets: a reader that turns the fuzzer's bytes into choices,
// a scratch directory, and the rule that decides what counts as a finding.
//
// A target may throw only the errors pmamba documents for bad input (ckpt::Error,
// model::ConfigError, pp::UsageError, pp::PipelineError): tools report those as a clear error.
// Anything else that escapes (a std::out_of_range, a json::type_error, ...) would reach a user
// as "internal error", so it is a finding too: the target aborts and libFuzzer keeps the input.
#pragma once

#include <hdf5.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "src/ckpt/errors.h"
#include "src/ckpt/fs.h"
#include "src/model/config.h"
#include "src/model/errors.h"
#include "src/pp/errors.h"

namespace pmamba::fuzz {

/// Consumes the fuzzer's bytes front to back; past the end every read gives zeros.
class Input {
 public:
  Input(const uint8_t* data, size_t size) : p_(data), n_(size) {}
  bool empty() const { return n_ == 0; }
  uint8_t byte() {
    if (n_ == 0) return 0;
    --n_;
    return *p_++;
  }
  uint64_t u64() {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(byte()) << (8 * i);
    return v;
  }
  /// An integer in [0, n) (0 when n == 0).
  uint64_t below(uint64_t n) { return n == 0 ? 0 : u64() % n; }
  bool flip() { return byte() & 1; }
  /// Up to `max` bytes, length first.
  std::string text(size_t max) {
    const size_t len = std::min<size_t>(below(max + 1), n_);
    std::string s(reinterpret_cast<const char*>(p_), len);
    p_ += len;
    n_ -= len;
    return s;
  }
  /// Whatever is left.
  std::string rest() {
    std::string s(reinterpret_cast<const char*>(p_), n_);
    p_ += n_;
    n_ = 0;
    return s;
  }
  template <typename T>
  const T& pick(const std::vector<T>& v) {
    return v[below(v.size())];
  }

 private:
  const uint8_t* p_;
  size_t n_;
};

/// A fresh, empty scratch directory for this process (under TMPDIR, /dev/shm when unset).
/// The smallest model the shard targets write (d_model 8, d_state 2, vocab 16): checkpoints of
/// a few KiB, so each input can write, read and verify one.
inline model::MambaConfig micro_config(int n_layer) {
  model::MambaConfig c;
  c.d_model = 8;
  c.n_layer = n_layer;
  c.vocab_size = 16;
  c.d_state = 2;
  c.dt_rank = c.dt_rank_value();
  c.validate();
  return c;
}

inline std::string scratch(const std::string& name) {
  static const std::string base = [] {
    const char* t = std::getenv("TMPDIR");
    std::string dir = std::string(t && *t ? t : "/dev/shm") + "/pmamba-fuzz-" + std::to_string(::getpid());
    ckpt::fs::make_dirs(dir);
    return dir;
  }();
  const std::string dir = base + "/" + name;
  ckpt::fs::remove_tree(dir);
  ckpt::fs::make_dirs(dir);
  return dir;
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) std::abort();
  std::fclose(f);
}

/// pmamba's readers close every HDF5 identifier they open (RAII): after an input none may be
/// left, or each would keep a file and its metadata alive (a leak LeakSanitizer cannot see,
/// since libhdf5 is not instrumented and its own error-path leaks are suppressed).
inline void expect_no_open_hdf5_ids(const char* what) {
  const ssize_t open = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
  if (open > 0) {
    std::fprintf(stderr, "finding: %s left %zd HDF5 identifiers open\n", what, open);
    std::abort();
  }
}

/// Runs `fn`, accepting only the documented errors for bad input.
template <typename Fn>
void expect_clean(const char* what, Fn&& fn) {
  try {
    fn();
  } catch (const ckpt::Error&) {
  } catch (const model::ConfigError&) {
  } catch (const pp::UsageError&) {
  } catch (const pp::PipelineError&) {
  } catch (const std::exception& e) {
    std::fprintf(stderr, "finding: %s let an undocumented exception escape: %s\n", what, e.what());
    std::abort();
  }
}

}  // namespace pmamba::fuzz
