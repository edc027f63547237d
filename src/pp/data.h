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
//   indexed PREFIX  a Megatron-LM indexed dataset (corpus.h), or a mixture P1=0.7,P2=0.3 of them:
//                   documents packed into one stream per epoch (shuffled per epoch from the
//                   seed, --eod-token between them when given), cut into windows of seq_len + 1.
//
// Held-out data (docs/DATA.md "How samples are drawn"): --eval-fraction F holds out whole
// documents (for text/tokens files: the last F of the file), chosen from the seed, which
// training never sees; --eval-data PATH takes another source instead. The built-in tasks hold
// out sample indices from 2^40 on. Evaluation samples are numbered from 0 within the held-out
// set, separately from training samples.
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
  int64_t eod_token = -1;     // indexed: token put after each packed document (-1: none)
  double eval_fraction = 0;   // held-out share of the documents (of the bytes for text/tokens)
  std::string eval_data;      // or a separate held-out source (any form --data takes)
};

/// Global index of a built-in task's first held-out sample.
inline constexpr int64_t kHeldOutBase = int64_t{1} << 40;

/// A batch: inputs (B, L) int64, targets (B, L) int64, mask (B, L) bool (which positions count).
struct Batch {
  at::Tensor inputs, targets, mask;
};

class DataSource {
 public:
  virtual ~DataSource() = default;
  /// Training samples [first, first + count) stacked into a batch.
  Batch batch(int64_t first, int64_t count) const;
  /// Evaluation samples [first, first + count) of the held-out set; indices at or past
  /// eval_size() (when bounded) give rows whose mask is all false, so a batch keeps its shape.
  Batch eval_batch(int64_t first, int64_t count) const;
  /// Evaluation samples there are: -1 unbounded (a built-in task), else the held-out windows.
  virtual int64_t eval_size() const { return -1; }
  /// Whether the evaluation samples are data training never sees. False for a file without a
  /// split: its evaluation windows then cover the whole file, training data included.
  virtual bool held_out() const { return true; }
  /// What the evaluation samples are, for output headers.
  virtual std::string describe_eval() const;
  /// One training / evaluation sample into row pointers of length seq_len().
  void fill(int64_t index, int64_t* inputs, int64_t* targets, bool* mask) const { sample(index, inputs, targets, mask); }
  void fill_eval(int64_t index, int64_t* inputs, int64_t* targets, bool* mask) const {
    eval_sample(index, inputs, targets, mask);
  }
  /// Bytes per token of the raw data (1 for text: bits per byte = loss / ln 2), or 0 unknown.
  virtual double bytes_per_token() const { return 0; }
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
  /// Fills evaluation sample `index` (< eval_size() when bounded). Default: training sample
  /// kHeldOutBase + index, which no run reaches.
  virtual void eval_sample(int64_t index, int64_t* inputs, int64_t* targets, bool* mask) const {
    sample(kHeldOutBase + index, inputs, targets, mask);
  }
};

/// The options as stored in a checkpoint's training state (with the source's content when
/// given), and back (missing keys keep `base`).
nlohmann::ordered_json data_to_json(const DataOptions& options, const nlohmann::ordered_json& content = nullptr);
DataOptions data_from_json(const nlohmann::ordered_json& j, DataOptions base);

/// "text", "tokens", "indexed", or the task's name.
std::string data_kind(const std::string& source);

/// The canonical source for what a user wrote after --data: a task name, text:/tokens:/indexed:
/// forms as they are, a mixture "P1=0.7,P2=0.3" or a prefix with P.idx next to it as
/// indexed:..., a path ending in .bin as tokens:, another path as text:. A word that is no task
/// and no file is refused, naming the closest task.
std::string resolve_source(const std::string& given);

/// Throws UsageError for an unknown source, an unreadable or too short file, or bad sizes.
std::unique_ptr<DataSource> make_data(const DataOptions& options);

}  // namespace pmamba::pp
