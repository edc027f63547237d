#include "src/pp/data.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "src/ckpt/errors.h"
#include "src/ckpt/format.h"
#include "src/ckpt/fs.h"
#include "src/model/init.h"
#include "src/pp/errors.h"

namespace pmamba::pp {

namespace {

uint64_t mix(uint64_t x) { return model::mix64(x); }

// A small counter-based stream per sample: draw k of sample i is mix(key(seed, i) + k).
class SampleRng {
 public:
  SampleRng(uint64_t seed, int64_t index) : key_(mix(seed ^ mix(static_cast<uint64_t>(index) + 0x5157))) {}
  uint64_t next() { return mix(key_ + counter_++); }
  int64_t below(int64_t n) { return static_cast<int64_t>(next() % static_cast<uint64_t>(n)); }

 private:
  uint64_t key_;
  uint64_t counter_ = 0;
};

class SelectiveCopy : public DataSource {
 public:
  SelectiveCopy(const DataOptions& o) : o_(o) {
    if (o.copy_tokens < 1 || o.copy_slots < o.copy_tokens) {
      throw UsageError("selective-copy needs 1 <= --copy-tokens <= --copy-slots (got " +
                       std::to_string(o.copy_tokens) + " and " + std::to_string(o.copy_slots) + ")");
    }
    if (o.task_vocab < 3) throw UsageError("selective-copy needs --task-vocab >= 3");
  }
  int64_t seq_len() const override { return o_.copy_slots + 2 * o_.copy_tokens; }
  int64_t vocab_needed() const override { return o_.task_vocab; }
  std::string describe() const override {
    return "selective-copy: " + std::to_string(o_.copy_tokens) + " tokens among " + std::to_string(o_.copy_slots) +
           " slots, vocab " + std::to_string(o_.task_vocab) + ", length " + std::to_string(seq_len());
  }

 protected:
  void sample(int64_t index, int64_t* x, int64_t* y, bool* mask) const override {
    SampleRng rng(o_.seed, index);
    const int64_t M = o_.copy_tokens, L = o_.copy_slots + M, T = seq_len(), marker = o_.task_vocab - 1;
    // M distinct positions among the first L (partial Fisher-Yates), kept in order.
    std::vector<int64_t> pos(static_cast<size_t>(L));
    for (int64_t i = 0; i < L; ++i) pos[i] = i;
    for (int64_t i = 0; i < M; ++i) std::swap(pos[i], pos[i + rng.below(L - i)]);
    std::sort(pos.begin(), pos.begin() + M);
    std::fill(x, x + T, 0);
    std::fill(y, y + T, 0);
    std::fill(mask, mask + T, false);
    for (int64_t i = 0; i < M; ++i) {
      const int64_t tok = 1 + rng.below(o_.task_vocab - 2);
      x[pos[i]] = tok;
      x[L + i] = marker;
      y[L + i] = tok;  // at the i-th marker the model must output the i-th data token
      mask[L + i] = true;
    }
  }

 private:
  DataOptions o_;
};

class Induction : public DataSource {
 public:
  Induction(const DataOptions& o) : o_(o), len_(o.seq_len > 0 ? o.seq_len : 64) {
    if (o.task_vocab < 3) throw UsageError("induction needs --task-vocab >= 3");
    if (len_ < 4) throw UsageError("induction needs --seq-len >= 4");
  }
  int64_t seq_len() const override { return len_; }
  int64_t vocab_needed() const override { return o_.task_vocab; }
  std::string describe() const override {
    return "induction: vocab " + std::to_string(o_.task_vocab) + ", length " + std::to_string(len_);
  }

 protected:
  void sample(int64_t index, int64_t* x, int64_t* y, bool* mask) const override {
    SampleRng rng(o_.seed, index);
    const int64_t trigger = o_.task_vocab - 1, T = len_;
    for (int64_t t = 0; t < T; ++t) x[t] = rng.below(o_.task_vocab - 1);  // never the trigger
    const int64_t at = rng.below(T - 3);  // trigger, value, ..., trigger
    const int64_t value = x[at + 1];
    x[at] = trigger;
    x[T - 1] = trigger;
    std::fill(y, y + T, 0);
    std::fill(mask, mask + T, false);
    y[T - 1] = value;
    mask[T - 1] = true;
  }

 private:
  DataOptions o_;
  int64_t len_;
};

// Windows of a token stream at positions drawn per sample; the target is the next token. T is
// the stored token type (bytes for text, uint16 for token files): the file's own size in memory.
template <typename T>
class Stream : public DataSource {
 public:
  Stream(const DataOptions& o, std::vector<T> tokens, int64_t vocab, std::string what, nlohmann::ordered_json content)
      : o_(o), tokens_(std::move(tokens)), vocab_(vocab), len_(o.seq_len > 0 ? o.seq_len : 128), what_(std::move(what)),
        content_(std::move(content)) {
    if (static_cast<int64_t>(tokens_.size()) < len_ + 1) {
      throw UsageError(what_ + " holds " + std::to_string(tokens_.size()) + " tokens, fewer than --seq-len + 1 = " +
                       std::to_string(len_ + 1));
    }
  }
  int64_t seq_len() const override { return len_; }
  int64_t vocab_needed() const override { return vocab_; }
  std::string describe() const override {
    return what_ + ": " + std::to_string(tokens_.size()) + " tokens, windows of " + std::to_string(len_);
  }
  nlohmann::ordered_json content() const override { return content_; }

 protected:
  void sample(int64_t index, int64_t* x, int64_t* y, bool* mask) const override {
    SampleRng rng(o_.seed, index);
    // Windows of len + 1 tokens (inputs and the shifted targets); the last starts at size - len - 1.
    const int64_t start = rng.below(static_cast<int64_t>(tokens_.size()) - len_);
    for (int64_t t = 0; t < len_; ++t) {
      x[t] = tokens_[static_cast<size_t>(start + t)];
      y[t] = tokens_[static_cast<size_t>(start + t + 1)];
      mask[t] = true;
    }
  }

 private:
  DataOptions o_;
  std::vector<T> tokens_;
  int64_t vocab_;
  int64_t len_;
  std::string what_;
  nlohmann::ordered_json content_;
};

// A data file read whole, after checking that it is a regular file of bounded size.
std::string read_data_file(const std::string& path) {
  try {
    return ckpt::fs::read_file(path, kMaxDataFileBytes);
  } catch (const ckpt::Error& e) {
    throw UsageError(std::string("cannot use data file '") + path + "': " + e.what());
  }
}

nlohmann::ordered_json content_of(const std::string& bytes) {
  return nlohmann::ordered_json{{"bytes", static_cast<int64_t>(bytes.size())},
                                {"xxh3_64", ckpt::digest_hex(ckpt::bytes_digest(bytes.data(), bytes.size()))}};
}

}  // namespace

Batch DataSource::batch(int64_t first, int64_t count) const {
  const int64_t T = seq_len();
  Batch b;
  b.inputs = at::empty({count, T}, at::kLong);
  b.targets = at::empty({count, T}, at::kLong);
  b.mask = at::empty({count, T}, at::kBool);
  for (int64_t i = 0; i < count; ++i) {
    sample(first + i, b.inputs.data_ptr<int64_t>() + i * T, b.targets.data_ptr<int64_t>() + i * T,
           b.mask.data_ptr<bool>() + i * T);
  }
  return b;
}

nlohmann::ordered_json data_to_json(const DataOptions& d, const nlohmann::ordered_json& content) {
  nlohmann::ordered_json j{{"source", d.source},         {"seed", d.seed},
                           {"seq_len", d.seq_len},       {"copy_tokens", d.copy_tokens},
                           {"copy_slots", d.copy_slots}, {"task_vocab", d.task_vocab}};
  if (!content.is_null()) j["content"] = content;
  return j;
}

std::string data_kind(const std::string& source) {
  if (source.rfind("text:", 0) == 0) return "text";
  if (source.rfind("tokens:", 0) == 0) return "tokens";
  return source;
}

DataOptions data_from_json(const nlohmann::ordered_json& j, DataOptions d) {
  d.source = j.value("source", d.source);
  d.seed = j.value("seed", d.seed);
  d.seq_len = j.value("seq_len", d.seq_len);
  d.copy_tokens = j.value("copy_tokens", d.copy_tokens);
  d.copy_slots = j.value("copy_slots", d.copy_slots);
  d.task_vocab = j.value("task_vocab", d.task_vocab);
  return d;
}

std::unique_ptr<DataSource> make_data(const DataOptions& o) {
  if (o.source == "selective-copy") return std::make_unique<SelectiveCopy>(o);
  if (o.source == "induction") return std::make_unique<Induction>(o);
  if (o.source.rfind("text:", 0) == 0) {
    const std::string path = o.source.substr(5);
    std::string bytes = read_data_file(path);
    nlohmann::ordered_json content = content_of(bytes);
    std::vector<uint8_t> tokens(bytes.begin(), bytes.end());
    bytes = std::string();
    return std::make_unique<Stream<uint8_t>>(o, std::move(tokens), 256, "text '" + path + "'", std::move(content));
  }
  if (o.source.rfind("tokens:", 0) == 0) {
    const std::string path = o.source.substr(7);
    std::string raw = read_data_file(path);
    if (raw.size() % 2 != 0) throw UsageError("token file '" + path + "' has an odd number of bytes (expected uint16)");
    nlohmann::ordered_json content = content_of(raw);
    std::vector<uint16_t> tokens(raw.size() / 2);
    int64_t vocab = 1;
    for (size_t i = 0; i < tokens.size(); ++i) {
      tokens[i] = static_cast<uint16_t>(static_cast<unsigned char>(raw[2 * i]) |
                                        (static_cast<unsigned char>(raw[2 * i + 1]) << 8));
      vocab = std::max<int64_t>(vocab, tokens[i] + 1);
    }
    raw = std::string();
    return std::make_unique<Stream<uint16_t>>(o, std::move(tokens), vocab, "token file '" + path + "'", std::move(content));
  }
  throw UsageError("unknown data source '" + o.source +
                   "' (expected selective-copy, induction, text:FILE or tokens:FILE.bin)");
}

}  // namespace pmamba::pp
