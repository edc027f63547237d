// Training data whose every sample is a pure function of (seed, global sample index), so the
// data position is one global counter, independent of the PP degree or the number of ranks.
//
// Tasks (reference/mamba.md §7):
//   selective-copy  L noise/data slots holding M data tokens at random sorted positions, then M
//                   markers; the targets at the marker positions are the data tokens in order.
//                   Token 0 = noise, V_task - 1 = marker, data tokens in 1 .. V_task - 2.
//   induction       random tokens with a trigger token (V_task - 1) at a random position followed
//                   by a value; the sequence ends with the trigger and the target is the value.
//   text FILE       bytes of a file (vocabulary 256); next-byte prediction at every position.
//   tokens FILE.bin little-endian uint16 token ids; next-token prediction at every position.
//
// A file source is identified by its content (size and xxh3-64), not its path: the handshake
// compares it between stages and a resume compares it with what the checkpoint recorded, so two
// ranks reading different files, or a run resumed after its data changed, fail loudly. Files
// are read whole, so they must be regular files of at most kMaxDataFileBytes.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace pmamba::pp {

/// The largest data file read (4 GiB): a device (/dev/zero) or a file beyond it is refused.
inline constexpr int64_t kMaxDataFileBytes = int64_t{4} << 30;

struct DataOptions {
  std::string source = "selective-copy";  // selective-copy | induction | text:PATH | tokens:PATH
  uint64_t seed = 0;
  int64_t seq_len = 0;      // text/tokens/induction length; 0 = task default
  int64_t copy_tokens = 8;  // selective-copy: M
  int64_t copy_slots = 32;  // selective-copy: L
  int64_t task_vocab = 16;  // selective-copy / induction vocabulary
};

/// A batch: inputs (B, L) int64, targets (B, L) int64, mask (B, L) bool (which positions count).
struct Batch {
  at::Tensor inputs, targets, mask;
};

class DataSource {
 public:
  virtual ~DataSource() = default;
  /// Samples [first, first + count) stacked into a batch.
  Batch batch(int64_t first, int64_t count) const;
  virtual int64_t seq_len() const = 0;
  /// Smallest model vocabulary that can hold the task's tokens.
  virtual int64_t vocab_needed() const = 0;
  /// Predictions that count per sample (for the global token count before a step).
  virtual std::string describe() const = 0;
  /// What the samples are made of: for a file, {"bytes": N, "xxh3_64": "..."}; for a built-in
  /// task, null (its options are the whole story).
  virtual nlohmann::ordered_json content() const { return nullptr; }

 protected:
  /// Fills one sample (row pointers of length seq_len()).
  virtual void sample(int64_t index, int64_t* inputs, int64_t* targets, bool* mask) const = 0;
};

/// The options as stored in a checkpoint's training state (with the source's content when
/// given), and back (missing keys keep `base`).
nlohmann::ordered_json data_to_json(const DataOptions& options, const nlohmann::ordered_json& content = nullptr);
DataOptions data_from_json(const nlohmann::ordered_json& j, DataOptions base);

/// "text", "tokens", or the task's name.
std::string data_kind(const std::string& source);

/// Throws UsageError for an unknown source, an unreadable or too short file, or bad sizes.
std::unique_ptr<DataSource> make_data(const DataOptions& options);

}  // namespace pmamba::pp
