#include "src/pp/data.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <mutex>

#include "src/ckpt/errors.h"
#include "src/ckpt/format.h"
#include "src/ckpt/fs.h"
#include "src/ckpt/suggest.h"
#include "src/model/init.h"
#include "src/pp/corpus.h"
#include "src/pp/errors.h"
#include "src/pp/handshake.h"

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
// With eval_fraction F the last ceil(F x size) tokens are held out: training windows lie wholly
// before them, evaluation windows tile them in order (stride seq_len). Without one, evaluation
// windows tile the whole file.
template <typename T>
class Stream : public DataSource {
 public:
  Stream(const DataOptions& o, std::vector<T> tokens, int64_t vocab, std::string what, nlohmann::ordered_json content)
      : o_(o), tokens_(std::move(tokens)), vocab_(vocab), len_(o.seq_len > 0 ? o.seq_len : 128), what_(std::move(what)),
        content_(std::move(content)) {
    const int64_t n = static_cast<int64_t>(tokens_.size());
    held_ = o.eval_fraction > 0 ? static_cast<int64_t>(std::ceil(o.eval_fraction * static_cast<double>(n))) : 0;
    train_end_ = n - held_;
    if (train_end_ < len_ + 1) {
      throw UsageError(what_ + " holds " + std::to_string(n) + " tokens" +
                       (held_ > 0 ? " (" + std::to_string(train_end_) + " for training after holding out " + std::to_string(held_) + ")"
                                  : std::string()) +
                       ", fewer than --seq-len + 1 = " + std::to_string(len_ + 1));
    }
    if (held_ > 0 && held_ < len_ + 1) {
      throw UsageError("--eval-fraction " + format_real(o.eval_fraction) + " of " + what_ + " holds out " + std::to_string(held_) +
                       " tokens, fewer than --seq-len + 1 = " + std::to_string(len_ + 1) + ": hold out more, or shorten --seq-len");
    }
    const int64_t span = held_ > 0 ? held_ : n;
    eval_windows_ = (span - 1) / len_;
  }
  int64_t seq_len() const override { return len_; }
  int64_t vocab_needed() const override { return vocab_; }
  std::string describe() const override {
    std::string d = what_ + ": " + std::to_string(tokens_.size()) + " tokens, windows of " + std::to_string(len_);
    if (held_ > 0) d += ", the last " + std::to_string(held_) + " held out";
    return d;
  }
  nlohmann::ordered_json content() const override { return content_; }
  int64_t eval_size() const override { return eval_windows_; }
  bool held_out() const override { return held_ > 0; }
  std::string describe_eval() const override {
    return std::to_string(eval_windows_) + " windows of " + std::to_string(len_) + (held_ > 0 ? " tiling the held-out last " + std::to_string(held_) + " tokens" : " tiling the whole file (no held-out split: training data)");
  }
  double bytes_per_token() const override { return sizeof(T); }

 protected:
  void sample(int64_t index, int64_t* x, int64_t* y, bool* mask) const override {
    SampleRng rng(o_.seed, index);
    // Windows of len + 1 tokens (inputs and the shifted targets); the last starts at end - len - 1.
    window(rng.below(train_end_ - len_), x, y, mask);
  }
  void eval_sample(int64_t index, int64_t* x, int64_t* y, bool* mask) const override {
    window((held_ > 0 ? train_end_ : 0) + index * len_, x, y, mask);
  }

 private:
  void window(int64_t start, int64_t* x, int64_t* y, bool* mask) const {
    for (int64_t t = 0; t < len_; ++t) {
      x[t] = tokens_[static_cast<size_t>(start + t)];
      y[t] = tokens_[static_cast<size_t>(start + t + 1)];
      mask[t] = true;
    }
  }

  DataOptions o_;
  std::vector<T> tokens_;
  int64_t vocab_;
  int64_t len_;
  std::string what_;
  nlohmann::ordered_json content_;
  int64_t held_ = 0, train_end_ = 0, eval_windows_ = 0;
};

// Documents of one indexed dataset packed into a stream: each document's tokens, then the EOD
// token when there is one. Training walks the training documents in a fresh order each epoch
// (a permutation from (seed, component, epoch)); evaluation walks the held-out documents once,
// in file order. Window j of a stream is its tokens [j L, j L + L + 1).
class PackedStream {
 public:
  PackedStream(std::vector<int64_t> docs, const IndexedDataset* ds, int64_t eod) : docs_(std::move(docs)), ds_(ds), eod_(eod) {
    for (int64_t d : docs_) tokens_ += ds_->document_length(d) + (eod_ >= 0 ? 1 : 0);
  }
  int64_t tokens() const { return tokens_; }
  int64_t windows(int64_t len) const { return tokens_ > 0 ? (tokens_ - 1) / len : 0; }
  const std::vector<int64_t>& docs() const { return docs_; }

  // Fills n tokens of the stream whose documents come in `order` (with each one's first offset
  // in `starts`), from `offset` on.
  void fill(const std::vector<int64_t>& order, const std::vector<int64_t>& starts, int64_t offset, int64_t n,
            int64_t* out) const {
    size_t k = static_cast<size_t>(std::upper_bound(starts.begin(), starts.end(), offset) - starts.begin()) - 1;
    int64_t pos = offset - starts[k];
    while (n > 0) {
      const int64_t d = order[k], len = ds_->document_length(d);
      if (pos < len) {
        const int64_t take = std::min(n, len - pos);
        ds_->copy(d, pos, take, out);
        out += take;
        n -= take;
        pos += take;
      } else {
        if (eod_ >= 0) {
          *out++ = eod_;
          --n;
        }
        ++k;
        pos = 0;
      }
    }
  }
  std::vector<int64_t> starts(const std::vector<int64_t>& order) const {
    std::vector<int64_t> s(order.size());
    int64_t at = 0;
    for (size_t i = 0; i < order.size(); ++i) {
      s[i] = at;
      at += ds_->document_length(order[i]) + (eod_ >= 0 ? 1 : 0);
    }
    return s;
  }

 private:
  std::vector<int64_t> docs_;
  const IndexedDataset* ds_;
  int64_t eod_;
  int64_t tokens_ = 0;
};

// The permutation of n items from one key (Fisher-Yates over a counter-based stream).
std::vector<int64_t> permutation(int64_t n, uint64_t key) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = i;
  SampleRng rng(key, 0x9e3779b97f4a7c15ULL & 0x7fffffffffffffffLL);
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(rng.below(i + 1))]);
  return p;
}

// Which component sample i of a mixture comes from, and its index there: component 0 takes
// sample i when floor(w0 (i + 1)) > floor(w0 i), so over any first n samples it has taken
// exactly floor(w0 n); the others split the rest the same way, in order. A pure function of i.
std::pair<size_t, int64_t> mixture_pick(const std::vector<double>& w, int64_t i) {
  double rest = 1.0;
  for (size_t k = 0; k + 1 < w.size(); ++k) {
    const double p = std::min(1.0, w[k] / rest);
    const auto a = static_cast<int64_t>(std::floor(p * static_cast<double>(i)));
    const auto b = static_cast<int64_t>(std::floor(p * static_cast<double>(i + 1)));
    if (b > a) return {k, a};
    i -= a;
    rest -= w[k];
  }
  return {w.size() - 1, i};
}

// Megatron-LM indexed datasets, one or a weighted mixture.
class Indexed : public DataSource {
 public:
  struct Part {
    std::string prefix;
    double weight = 1;
    std::unique_ptr<IndexedDataset> ds;
    std::unique_ptr<PackedStream> train, held;
    int64_t train_windows = 0, held_windows = 0;
  };

  Indexed(const DataOptions& o, const std::string& spec) : o_(o), len_(o.seq_len > 0 ? o.seq_len : 128) {
    auto mixture = parse_mixture(spec);
    double total = 0, largest = 0;
    for (const auto& m : mixture) {
      total += m.second;
      largest = std::max(largest, m.second);
    }
    if (!std::isfinite(total)) {
      // Weights near double's limit (1e308 each) sum to infinity and would all normalise to 0,
      // drawing every sample from the last component: scaled by the largest first, they keep
      // their proportions. (Only then: a finite sum keeps the arithmetic, and so the samples,
      // of the runs that checkpoints were written by.)
      total = 0;
      for (auto& m : mixture) total += (m.second /= largest);
    }
    for (const auto& [prefix, weight] : mixture) {
      Part part;
      part.prefix = prefix;
      part.weight = weight;
      part.ds = std::make_unique<IndexedDataset>(prefix);
      parts_.push_back(std::move(part));
    }
    for (size_t k = 0; k < parts_.size(); ++k) {
      Part& part = parts_[k];
      part.weight /= total;
      weights_.push_back(part.weight);
      const IndexedDataset& ds = *part.ds;
      vocab_ = std::max(vocab_, ds.max_token() + 1);
      if (o.eod_token >= 0) vocab_ = std::max(vocab_, o.eod_token + 1);
      const int64_t n = ds.documents();
      // Whole documents held out, chosen from the seed alone: the same at every layout and on
      // every rank, and recomputable from what the checkpoint records.
      int64_t n_held = o.eval_fraction > 0 ? static_cast<int64_t>(std::llround(o.eval_fraction * static_cast<double>(n))) : 0;
      if (o.eval_fraction > 0) n_held = std::max<int64_t>(n_held, 1);
      if (n_held >= n) {
        throw UsageError("--eval-fraction " + format_real(o.eval_fraction) + " of the " + std::to_string(n) +
                         " documents of '" + part.prefix + "' leaves none for training");
      }
      std::vector<bool> is_held(static_cast<size_t>(n), false);
      const std::vector<int64_t> p = permutation(n, model::mix64(o.seed ^ 0x686f6c646f7574ULL) + k);  // "holdout"
      for (int64_t i = 0; i < n_held; ++i) is_held[static_cast<size_t>(p[static_cast<size_t>(i)])] = true;
      std::vector<int64_t> train, held;
      for (int64_t d = 0; d < n; ++d) (is_held[static_cast<size_t>(d)] ? held : train).push_back(d);
      part.train = std::make_unique<PackedStream>(std::move(train), part.ds.get(), o.eod_token);
      part.held = std::make_unique<PackedStream>(std::move(held), part.ds.get(), o.eod_token);
      part.train_windows = part.train->windows(len_);
      if (part.train_windows < 1) {
        throw UsageError("indexed dataset '" + part.prefix + "' holds " + std::to_string(part.train->tokens()) +
                         " training tokens, fewer than --seq-len + 1 = " + std::to_string(len_ + 1));
      }
      part.held_windows = part.held->windows(len_);
      if (n_held > 0 && part.held_windows < 1) {
        throw UsageError("the " + std::to_string(n_held) + " documents held out of '" + part.prefix + "' hold " +
                         std::to_string(part.held->tokens()) + " tokens, fewer than --seq-len + 1 = " +
                         std::to_string(len_ + 1) + ": hold out more (--eval-fraction), or shorten --seq-len");
      }
      eval_windows_ += n_held > 0 ? part.held_windows : 0;
      held_starts_.push_back(part.held->starts(part.held->docs()));
    }
    if (eval_windows_ == 0) {
      // No split: evaluation tiles every document of every component in file order.
      for (size_t k = 0; k < parts_.size(); ++k) {
        Part& part = parts_[k];
        std::vector<int64_t> all(static_cast<size_t>(part.ds->documents()));
        for (size_t d = 0; d < all.size(); ++d) all[d] = static_cast<int64_t>(d);
        part.held = std::make_unique<PackedStream>(std::move(all), part.ds.get(), o.eod_token);
        part.held_windows = part.held->windows(len_);
        held_starts_[k] = part.held->starts(part.held->docs());
        eval_windows_ += part.held_windows;
      }
      held_out_ = false;
    }
    epochs_.resize(parts_.size());
  }

  int64_t seq_len() const override { return len_; }
  int64_t vocab_needed() const override { return vocab_; }
  std::string describe() const override {
    std::string d = parts_.size() == 1 ? "indexed dataset" : "mixture of " + std::to_string(parts_.size()) + " indexed datasets";
    for (size_t k = 0; k < parts_.size(); ++k) {
      const Part& p = parts_[k];
      d += (k ? "; '" : " '") + p.prefix + "'";
      if (parts_.size() > 1) d += " x " + format_real(p.weight);
      d += " (" + std::to_string(p.ds->documents()) + " documents, " + std::to_string(p.ds->tokens()) + " " + p.ds->dtype_name() +
           " tokens" + (held_out_ ? ", " + std::to_string(p.held->docs().size()) + " documents held out" : std::string()) + ")";
    }
    d += ", windows of " + std::to_string(len_);
    if (o_.eod_token >= 0) d += ", EOD " + std::to_string(o_.eod_token) + " after each document";
    return d;
  }
  nlohmann::ordered_json content() const override {
    nlohmann::ordered_json parts = nlohmann::ordered_json::array();
    for (const Part& p : parts_) {
      nlohmann::ordered_json c = p.ds->content();
      if (held_out_) {
        c["held_out_documents"] = static_cast<int64_t>(p.held->docs().size());
        const std::vector<int64_t>& h = p.held->docs();
        c["held_out_xxh3_64"] = ckpt::digest_hex(ckpt::bytes_digest(h.data(), h.size() * sizeof(int64_t)));
      }
      parts.push_back(std::move(c));
    }
    return parts_.size() == 1 ? parts[0] : parts;
  }
  int64_t eval_size() const override { return eval_windows_; }
  bool held_out() const override { return held_out_; }
  std::string describe_eval() const override {
    return std::to_string(eval_windows_) + " windows of " + std::to_string(len_) +
           (held_out_ ? " from the held-out documents" : " tiling every document (no held-out split: training data)");
  }

 protected:
  void sample(int64_t index, int64_t* x, int64_t* y, bool* mask) const override {
    const auto [k, local] = parts_.size() == 1 ? std::pair<size_t, int64_t>{0, index} : mixture_pick(weights_, index);
    const Part& part = parts_[k];
    const int64_t epoch = local / part.train_windows, j = local % part.train_windows;
    std::vector<int64_t> w(static_cast<size_t>(len_ + 1));
    {
      std::lock_guard<std::mutex> lock(mu_);
      Epoch& e = epochs_[k];
      if (e.number != epoch) {
        // A fresh order of the training documents for this epoch.
        const std::vector<int64_t>& docs = part.train->docs();
        const std::vector<int64_t> p =
            permutation(static_cast<int64_t>(docs.size()), model::mix64(o_.seed + 0x65706f6368ULL * (k + 1)) ^ static_cast<uint64_t>(epoch));
        e.order.resize(docs.size());
        for (size_t i = 0; i < docs.size(); ++i) e.order[i] = docs[static_cast<size_t>(p[i])];
        e.starts = part.train->starts(e.order);
        e.number = epoch;
      }
      part.train->fill(e.order, e.starts, j * len_, len_ + 1, w.data());
    }
    emit(w, x, y, mask);
  }
  void eval_sample(int64_t index, int64_t* x, int64_t* y, bool* mask) const override {
    // The components interleaved in proportion to their held-out windows (exactly: over all
    // eval_size() samples each window comes once), so any first N samples mix like the whole.
    size_t k = 0;
    int64_t rest = eval_windows_;
    for (; k + 1 < parts_.size(); ++k) {
      const __int128 n = parts_[k].held_windows;
      const auto a = static_cast<int64_t>(n * index / rest), b = static_cast<int64_t>(n * (index + 1) / rest);
      if (b > a) {
        index = a;
        break;
      }
      index -= a;
      rest -= parts_[k].held_windows;
    }
    std::vector<int64_t> w(static_cast<size_t>(len_ + 1));
    parts_[k].held->fill(parts_[k].held->docs(), held_starts_[k], index * len_, len_ + 1, w.data());
    emit(w, x, y, mask);
  }

 private:
  struct Epoch {
    int64_t number = -1;
    std::vector<int64_t> order, starts;
  };
  void emit(const std::vector<int64_t>& w, int64_t* x, int64_t* y, bool* mask) const {
    for (int64_t t = 0; t < len_; ++t) {
      x[t] = w[static_cast<size_t>(t)];
      y[t] = w[static_cast<size_t>(t + 1)];
      mask[t] = true;
    }
  }
  static std::vector<std::pair<std::string, double>> parse_mixture(const std::string& spec) {
    std::vector<std::pair<std::string, double>> parts;
    size_t at = 0;
    while (at <= spec.size()) {
      const size_t comma = std::min(spec.find(',', at), spec.size());
      const std::string item = spec.substr(at, comma - at);
      const size_t eq = item.rfind('=');
      std::string prefix = item;
      double weight = 1;
      if (eq != std::string::npos) {
        prefix = item.substr(0, eq);
        const std::string w = item.substr(eq + 1);
        size_t used = 0;
        try {
          weight = std::stod(w, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (used == 0 || used != w.size() || !(weight > 0) || !std::isfinite(weight)) {
          throw UsageError("mixture weight '" + w + "' of '" + prefix + "' in --data '" + spec + "' is not a positive number");
        }
      } else if (spec.find(',') != std::string::npos) {
        throw UsageError("mixture part '" + item + "' in --data '" + spec + "' has no weight (expected PREFIX=WEIGHT)");
      }
      if (prefix.empty()) throw UsageError("--data '" + spec + "' has an empty dataset prefix");
      parts.emplace_back(prefix, weight);
      at = comma + 1;
    }
    return parts;
  }

  DataOptions o_;
  int64_t len_;
  std::vector<Part> parts_;
  std::vector<double> weights_;
  std::vector<std::vector<int64_t>> held_starts_;
  int64_t vocab_ = 1;
  int64_t eval_windows_ = 0;
  bool held_out_ = true;
  mutable std::mutex mu_;
  mutable std::vector<Epoch> epochs_;
};

// Training from one source, evaluation on all of another (--eval-data): data training never sees.
class WithEvalData : public DataSource {
 public:
  WithEvalData(std::unique_ptr<DataSource> train, std::unique_ptr<DataSource> eval) : train_(std::move(train)), eval_(std::move(eval)) {
    if (train_->seq_len() != eval_->seq_len()) {
      throw UsageError("--eval-data gives samples of length " + std::to_string(eval_->seq_len()) + " but training samples have " +
                       std::to_string(train_->seq_len()));
    }
    if (eval_->eval_size() == 0) throw UsageError("--eval-data '" + eval_->describe() + "' holds no evaluation window");
  }
  int64_t seq_len() const override { return train_->seq_len(); }
  int64_t vocab_needed() const override { return std::max(train_->vocab_needed(), eval_->vocab_needed()); }
  std::string describe() const override { return train_->describe() + "; held out: " + eval_->describe(); }
  nlohmann::ordered_json content() const override {
    return nlohmann::ordered_json{{"train", train_->content()}, {"eval_data", eval_->content()}};
  }
  int64_t eval_size() const override { return eval_->eval_size(); }
  std::string describe_eval() const override {
    std::string d = eval_->describe_eval();
    const size_t cut = d.find(" (no held-out split");
    return (cut == std::string::npos ? d : d.substr(0, cut)) + " of --eval-data";
  }
  double bytes_per_token() const override { return eval_->bytes_per_token(); }

 protected:
  void sample(int64_t index, int64_t* x, int64_t* y, bool* mask) const override { train_->fill(index, x, y, mask); }
  void eval_sample(int64_t index, int64_t* x, int64_t* y, bool* mask) const override { eval_->fill_eval(index, x, y, mask); }

 private:
  std::unique_ptr<DataSource> train_, eval_;
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

Batch DataSource::eval_batch(int64_t first, int64_t count) const {
  const int64_t T = seq_len(), n = eval_size();
  if (n == 0) throw UsageError("the data has no evaluation samples");
  Batch b;
  b.inputs = at::empty({count, T}, at::kLong);
  b.targets = at::empty({count, T}, at::kLong);
  b.mask = at::empty({count, T}, at::kBool);
  for (int64_t i = 0; i < count; ++i) {
    int64_t* x = b.inputs.data_ptr<int64_t>() + i * T;
    int64_t* y = b.targets.data_ptr<int64_t>() + i * T;
    bool* m = b.mask.data_ptr<bool>() + i * T;
    const int64_t j = first + i;
    // Past a bounded set: a real sample's tokens (any would do) that count for nothing.
    eval_sample(n < 0 || j < n ? j : j % n, x, y, m);
    if (n >= 0 && j >= n) std::fill(m, m + T, false);
  }
  return b;
}

std::string DataSource::describe_eval() const { return "held-out samples from index 2^40 on"; }

nlohmann::ordered_json data_to_json(const DataOptions& d, const nlohmann::ordered_json& content) {
  nlohmann::ordered_json j{{"source", d.source},           {"seed", d.seed},
                           {"seq_len", d.seq_len},         {"copy_tokens", d.copy_tokens},
                           {"copy_slots", d.copy_slots},   {"task_vocab", d.task_vocab},
                           {"eod_token", d.eod_token},     {"eval_fraction", d.eval_fraction},
                           {"eval_data", d.eval_data}};
  if (!content.is_null()) j["content"] = content;
  return j;
}

std::string data_kind(const std::string& source) {
  for (const char* kind : {"text", "tokens", "indexed"}) {
    if (source.rfind(std::string(kind) + ":", 0) == 0) return kind;
  }
  return source;
}

DataOptions data_from_json(const nlohmann::ordered_json& j, DataOptions d) {
  d.source = j.value("source", d.source);
  d.seed = j.value("seed", d.seed);
  d.seq_len = j.value("seq_len", d.seq_len);
  d.copy_tokens = j.value("copy_tokens", d.copy_tokens);
  d.copy_slots = j.value("copy_slots", d.copy_slots);
  d.task_vocab = j.value("task_vocab", d.task_vocab);
  d.eod_token = j.value("eod_token", d.eod_token);
  d.eval_fraction = j.value("eval_fraction", d.eval_fraction);
  d.eval_data = j.value("eval_data", d.eval_data);
  return d;
}

namespace {

const std::vector<std::string> kTasks = {"selective-copy", "induction"};

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

std::unique_ptr<DataSource> make_one(const DataOptions& o) {
  if (o.source == "selective-copy" || o.source == "induction") {
    if (o.eval_fraction != 0) {
      throw UsageError("--eval-fraction applies to files and indexed datasets; " + o.source +
                       " holds out its samples from index 2^40 on by itself");
    }
    if (o.source == "selective-copy") return std::make_unique<SelectiveCopy>(o);
    return std::make_unique<Induction>(o);
  }
  if (o.eval_fraction < 0 || o.eval_fraction >= 1 || !std::isfinite(o.eval_fraction)) {
    throw UsageError("--eval-fraction must be in [0, 1), found " + format_real(o.eval_fraction));
  }
  if (o.eod_token >= 0 && data_kind(o.source) != "indexed") {
    throw UsageError("--eod-token applies to indexed datasets (documents to pack), not to " + o.source);
  }
  if (o.source.rfind("indexed:", 0) == 0) return std::make_unique<Indexed>(o, o.source.substr(8));
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
  throw UsageError("unknown data source '" + o.source + "'" + ckpt::did_you_mean(o.source, kTasks) +
                   " (expected selective-copy, induction, text:FILE, tokens:FILE.bin or an indexed dataset PREFIX)");
}

}  // namespace

std::string resolve_source(const std::string& g) {
  if (g == "selective-copy" || g == "induction") return g;
  for (const char* kind : {"text:", "tokens:", "indexed:"}) {
    if (g.rfind(kind, 0) == 0) return g;
  }
  if (g.find('=') != std::string::npos || is_indexed_prefix(g)) return "indexed:" + g;
  if (ends_with(g, ".bin")) {
    // PREFIX.bin of an indexed dataset given by its tokens file.
    const std::string prefix = g.substr(0, g.size() - 4);
    return is_indexed_prefix(prefix) ? "indexed:" + prefix : "tokens:" + g;
  }
  if (ckpt::fs::exists(g) || g.find('/') != std::string::npos || g.find('.') != std::string::npos) return "text:" + g;
  throw UsageError("unknown data source '" + g + "'" + ckpt::did_you_mean(g, kTasks) +
                   ": expected selective-copy, induction, text:FILE, tokens:FILE.bin, a file, or an indexed dataset "
                   "PREFIX (with PREFIX.idx and PREFIX.bin) or a mixture P1=0.7,P2=0.3; no file '" + g + "' or '" + g +
                   ".idx' exists");
}

std::unique_ptr<DataSource> make_data(const DataOptions& o) {
  if (o.eval_data.empty()) return make_one(o);
  if (o.eval_fraction != 0) throw UsageError("give --eval-fraction or --eval-data, not both");
  if (o.source == "selective-copy" || o.source == "induction") {
    throw UsageError("--eval-data applies to files and indexed datasets; " + o.source + " holds out its own samples");
  }
  DataOptions e = o;
  e.source = resolve_source(o.eval_data);
  e.eval_data.clear();
  return std::make_unique<WithEvalData>(make_one(o), make_one(e));
}

}  // namespace pmamba::pp
