#include "src/ckpt/check.h"

#include <cmath>
#include <set>

#include "src/ckpt/errors.h"
#include "src/ckpt/fs.h"
#include "src/ckpt/shard.h"
#include "src/model/errors.h"
#include "src/model/fqn.h"

namespace pmamba::ckpt {

using ojson = nlohmann::ordered_json;

void Problems::add(const std::string& problem) {
  list_.push_back(problem);
  if (mode_ == Mode::kThrow) throw FormatError(prefix_ + problem);
}

namespace {

const Slot kOptimSlots[] = {Slot::kExpAvg, Slot::kExpAvgSq, Slot::kStep};

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

bool is_float_dtype(const std::string& d) {
  return d == "float32" || d == "bfloat16" || d == "float16" || d == "float64";
}

}  // namespace

void check_manifest(const Manifest& m, Problems& p) {
  if (m.format_version >= 2 && !is_run_id(m.run_id)) {
    p.add("run_id '" + fs::printable(m.run_id) + "' is not 32 lowercase hex digits");
  }
  const int n = static_cast<int>(m.stages.size());
  if (n < 1) {
    p.add("layout lists no stages");
    return;
  }
  int64_t next = 0;
  bool layout_ok = true;
  for (int i = 0; i < n; ++i) {
    const StageEntry& s = m.stages[static_cast<size_t>(i)];
    if (s.stage != i) {
      p.add("layout stage " + std::to_string(i) + " is numbered " + std::to_string(s.stage));
      layout_ok = false;
    }
    if (s.layer_begin != next || s.layer_end < s.layer_begin) {
      p.add("stage " + std::to_string(i) + " holds layers [" + std::to_string(s.layer_begin) + ", " +
            std::to_string(s.layer_end) + ") but should start at layer " + std::to_string(next));
      layout_ok = false;
    }
    const int parts = static_cast<int>(s.files.size());
    if (parts < 1 || (parts > 1 && m.format_version < 3)) {
      p.add("stage " + std::to_string(i) + " lists " + std::to_string(parts) + " files (format version " +
            std::to_string(m.format_version) + " has one per stage)");
      layout_ok = false;
    }
    for (int k = 0; k < parts; ++k) {
      const ShardFile& f = s.files[static_cast<size_t>(k)];
      const std::string expect = shard_file_name(i, n, k, parts);
      if (f.file != expect) {
        p.add("stage " + std::to_string(i) + " file " + std::to_string(k) + " is '" + fs::printable(f.file) + "', expected '" +
              expect + "'");
        layout_ok = false;
      }
      if (f.bytes < 0) p.add("stage " + std::to_string(i) + " records a negative shard size " + std::to_string(f.bytes));
    }
    next = s.layer_end;
  }
  if (next != m.config.n_layer) {
    p.add("layout covers " + std::to_string(next) + " layers but the config has n_layer = " +
          std::to_string(m.config.n_layer));
    layout_ok = false;
  }
  if (!layout_ok) return;  // ownership below is meaningless without a valid layout
  const std::vector<model::StageSpec> specs = m.stage_specs();
  const std::vector<model::ParamInfo> params = model::list_parameters(m.config);
  std::set<std::string> known;
  for (const auto& param : params) known.insert(param.fqn);
  std::set<std::string> seen;
  for (const auto& t : m.tensors) {
    if (!known.count(t.fqn)) p.add("unknown tensor '" + fs::printable(t.fqn) + "' (not a parameter of this config)");
    if (!seen.insert(t.fqn).second) p.add("tensor '" + t.fqn + "' is listed twice");
  }
  for (const auto& param : params) {
    const TensorEntry* t = m.find(param.fqn);
    const int owner = model::owner_stage(param, specs);
    if (!t) {
      p.add("checkpoint lacks '" + param.fqn + "' (expected in a file of stage " + std::to_string(owner) + ")");
      continue;
    }
    if (t->stage != owner) {
      p.add("'" + param.fqn + "' is stored by stage " + std::to_string(t->stage) + " but stage " +
            std::to_string(owner) + " owns it in this layout");
    }
    bool in_owner = false;
    for (const auto& f : m.stages[static_cast<size_t>(owner)].files) in_owner = in_owner || f.file == t->file;
    if (!in_owner) p.add("'" + param.fqn + "' names file '" + fs::printable(t->file) + "', not one of stage " + std::to_string(owner) + "'s");
    if (!param.tied_to.empty()) {
      if (t->alias_of != param.tied_to) {
        p.add("'" + param.fqn + "' is tied to '" + param.tied_to + "' but is not stored as its alias");
      } else if (!t->alias_digests.count(Slot::kParam)) {
        p.add("alias '" + param.fqn + "' has no digest");
      }
      continue;
    }
    if (!t->alias_of.empty()) p.add("'" + param.fqn + "' is stored as an alias but the config does not tie it");
    auto slot = t->slots.find(Slot::kParam);
    if (slot == t->slots.end()) {
      p.add("'" + param.fqn + "' has no parameter data");
      continue;
    }
    if (slot->second.shape != param.shape) {
      p.add("'" + param.fqn + "' has shape " + shape_str(slot->second.shape) + " but the config expects " +
            shape_str(param.shape));
    }
    if (!is_float_dtype(slot->second.dtype)) p.add("'" + param.fqn + "' has dtype " + fs::printable(slot->second.dtype));
    if (m.has_optimizer) {
      for (Slot s : kOptimSlots) {
        auto it = t->slots.find(s);
        if (it == t->slots.end()) {
          p.add("'" + param.fqn + "' lacks optimizer state '" + slot_name(s) + "'");
          continue;
        }
        const std::vector<int64_t> expect = s == Slot::kStep ? std::vector<int64_t>{} : param.shape;
        if (it->second.shape != expect) {
          p.add("optimizer state '" + std::string(slot_name(s)) + "' of '" + param.fqn + "' has shape " +
                shape_str(it->second.shape) + " but should have " + shape_str(expect));
        }
        const bool ok = s == Slot::kStep ? it->second.dtype == "int64" : it->second.dtype == "float32";
        if (!ok) {
          p.add("optimizer state '" + std::string(slot_name(s)) + "' of '" + param.fqn + "' has dtype " +
                fs::printable(it->second.dtype));
        }
      }
    } else if (t->slots.size() != 1) {
      p.add("'" + param.fqn + "' carries optimizer state but has_optimizer is false");
    }
  }
  check_train_state(m.train, m.step, p);
}

void check_train_state(const ojson& t, int64_t step, Problems& p) {
  if (!t.is_object()) {
    p.add("train is not a JSON object");
    return;
  }
  // Each known field: present is optional (older writers recorded fewer), present means right.
  auto integer = [&](const ojson& obj, const char* key, const std::string& name, int64_t lo, int64_t hi) {
    if (!obj.contains(key)) return;
    const ojson& v = obj.at(key);
    const bool ok = v.is_number_integer() &&
                    (v.is_number_unsigned() ? v.get<uint64_t>() <= static_cast<uint64_t>(hi)
                                            : v.get<int64_t>() >= lo && v.get<int64_t>() <= hi);
    if (!ok) {
      p.add(name + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], found " +
            fs::printable(v.dump()));
    }
  };
  auto seed = [&](const ojson& obj, const char* key, const std::string& name) {
    if (!obj.contains(key)) return;
    const ojson& v = obj.at(key);
    if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0)) {
      p.add(name + " must be an integer in [0, 2^64 - 1], found " + fs::printable(v.dump()));
    }
  };
  // A real in [lo, hi] (or (lo, hi] with open_lo, [lo, hi) with open_hi); JSON has no NaN.
  auto real = [&](const ojson& obj, const char* key, const std::string& name, double lo, bool open_lo, double hi,
                  bool open_hi) {
    if (!obj.contains(key)) return;
    const ojson& v = obj.at(key);
    const double x = v.is_number() ? v.get<double>() : std::nan("");
    const bool ok = std::isfinite(x) && (open_lo ? x > lo : x >= lo) && (open_hi ? x < hi : x <= hi);
    if (!ok) {
      p.add(name + " must be a number in " + (open_lo ? "(" : "[") + fs::printable(ojson(lo).dump()) + ", " +
            fs::printable(ojson(hi).dump()) + (open_hi ? ")" : "]") + ", found " + fs::printable(v.dump()));
    }
  };
  auto text = [&](const ojson& obj, const char* key, const std::string& name) {
    if (obj.contains(key) && !obj.at(key).is_string()) p.add(name + " must be a string, found " + fs::printable(obj.at(key).dump()));
  };
  auto object = [&](const char* key) -> const ojson* {
    if (!t.contains(key)) return nullptr;
    if (!t.at(key).is_object()) {
      p.add(std::string("train.") + key + " must be an object, found " + fs::printable(t.at(key).dump()));
      return nullptr;
    }
    return &t.at(key);
  };
  constexpr int64_t kMax = INT64_MAX;
  constexpr double kInf = 1e300;
  if (!t.contains("step")) {
    p.add("train.step is missing");
  } else {
    integer(t, "step", "train.step", 0, kMax);
    if (t.at("step").is_number_integer() && t.at("step") != ojson(step)) {
      p.add("train.step is " + fs::printable(t.at("step").dump()) + " but the checkpoint is of step " + std::to_string(step));
    }
  }
  seed(t, "seed", "train.seed");
  integer(t, "samples_consumed", "train.samples_consumed", 0, kMax);
  integer(t, "tokens_consumed", "train.tokens_consumed", 0, kMax);
  if (const ojson* d = object("data")) {
    text(*d, "source", "train.data.source");
    seed(*d, "seed", "train.data.seed");
    integer(*d, "seq_len", "train.data.seq_len", 0, int64_t{1} << 32);
    integer(*d, "copy_tokens", "train.data.copy_tokens", 0, int64_t{1} << 32);
    integer(*d, "copy_slots", "train.data.copy_slots", 0, int64_t{1} << 32);
    integer(*d, "task_vocab", "train.data.task_vocab", 0, int64_t{1} << 32);
    integer(*d, "eod_token", "train.data.eod_token", -1, int64_t{1} << 32);
    real(*d, "eval_fraction", "train.data.eval_fraction", 0, false, 1, true);
    text(*d, "eval_data", "train.data.eval_data");
    if (d->contains("content")) {
      const ojson& c = d->at("content");
      // A file's {bytes, xxh3_64}; an indexed dataset's {idx, bin, ...}; a mixture's array of those.
      if (!c.is_object() && !c.is_array()) {
        p.add("train.data.content must be an object or an array");
      } else if (c.is_object()) {
        integer(c, "bytes", "train.data.content.bytes", 0, kMax);
        text(c, "xxh3_64", "train.data.content.xxh3_64");
      }
    }
  }
  text(t, "metrics", "train.metrics");
  if (const ojson* s = object("lr_schedule")) {
    real(*s, "lr", "train.lr_schedule.lr", 0, false, kInf, false);
    real(*s, "min_lr", "train.lr_schedule.min_lr", 0, false, kInf, false);
    integer(*s, "warmup", "train.lr_schedule.warmup", 0, kMax);
    integer(*s, "steps", "train.lr_schedule.steps", 1, kMax);
  }
  if (const ojson* o = object("optimizer")) {
    real(*o, "beta1", "train.optimizer.beta1", 0, false, 1, true);
    real(*o, "beta2", "train.optimizer.beta2", 0, false, 1, true);
    real(*o, "eps", "train.optimizer.eps", 0, true, kInf, false);
    real(*o, "weight_decay", "train.optimizer.weight_decay", 0, false, kInf, false);
    real(*o, "clip", "train.optimizer.clip", 0, false, kInf, false);
  }
  if (const ojson* b = object("batch")) {
    integer(*b, "samples_per_step", "train.batch.samples_per_step", 1, kMax);
    integer(*b, "microbatches", "train.batch.microbatches", 1, 1 << 20);
    integer(*b, "microbatch_size", "train.batch.microbatch_size", 1, 1 << 20);
    text(*b, "schedule", "train.batch.schedule");
    text(*b, "autocast", "train.batch.autocast");
    text(*b, "grad_reduce", "train.batch.grad_reduce");
  }
}

bool check_shard(const Manifest& m, const StageEntry& s, const ShardFile& f, const std::string& dir, Problems& p,
                 CheckedShard& out) {
  const std::string path = fs::join(dir, f.file);
  const std::string name = "shard '" + path + "'";
  if (!fs::is_file(path)) {
    p.add("missing shard '" + f.file + "' (stage " + std::to_string(s.stage) + ", listed in the manifest of '" + dir + "')");
    return false;
  }
  const int64_t size = fs::file_size(path);
  if (size != f.bytes) {
    p.add(name + " is " + std::to_string(size) + " bytes but the manifest records " + std::to_string(f.bytes) +
          (size < f.bytes ? " (truncated)" : ""));
  }
  try {
    out.reader = std::make_unique<ShardReader>(path);
  } catch (const Error& e) {
    p.add(e.what());
    return false;
  }
  const ShardHeader& h = out.reader->header();
  const int n = static_cast<int>(m.stages.size());
  if (h.stage != s.stage || h.num_stages != n || h.layer_begin != s.layer_begin || h.layer_end != s.layer_end ||
      h.step != m.step) {
    p.add(name + " says stage " + std::to_string(h.stage) + " of " + std::to_string(h.num_stages) + ", layers [" +
          std::to_string(h.layer_begin) + ", " + std::to_string(h.layer_end) + "), step " + std::to_string(h.step) +
          "; the manifest says stage " + std::to_string(s.stage) + " of " + std::to_string(n) + ", layers [" +
          std::to_string(s.layer_begin) + ", " + std::to_string(s.layer_end) + "), step " + std::to_string(m.step));
  }
  int part = 0;
  while (part < static_cast<int>(s.files.size()) && s.files[static_cast<size_t>(part)].file != f.file) ++part;
  if (h.part != part || h.parts != static_cast<int>(s.files.size())) {
    p.add(name + " says it is file " + std::to_string(h.part) + " of " + std::to_string(h.parts) + " of its stage; the manifest says " +
          std::to_string(part) + " of " + std::to_string(s.files.size()));
  }
  if (out.reader->format_version() != m.format_version) {
    p.add(name + " is format version " + std::to_string(out.reader->format_version()) + " but the manifest is " +
          std::to_string(m.format_version));
  }
  try {
    if (!(model::config_from_json_string(h.config_json) == m.config)) p.add(name + " was written for another model config");
  } catch (const model::ConfigError& e) {
    p.add(name + ": bad config attribute: " + e.what());
  }
  try {
    if (ojson::parse(h.train_json) != m.train) p.add(name + ": its training state differs from the manifest's");
  } catch (const nlohmann::json::exception&) {
    p.add(name + ": its training state attribute is not JSON");
  }
  if (!h.compression.empty() && h.compression != m.compression.str()) {
    p.add(name + " says compression '" + fs::printable(h.compression) + "' but the manifest says '" + m.compression.str() + "'");
  }
  std::vector<StoredDataset> scanned;
  try {
    scanned = out.reader->scan();
  } catch (const Error& e) {
    p.add(e.what());
    return false;
  }
  for (auto& d : scanned) out.datasets.emplace(d.path, std::move(d));
  // Exactly the datasets the manifest assigns to this shard: none missing, none extra (an FQN
  // stored twice), each as the manifest describes it.
  std::set<std::string> expected;
  for (const auto& t : m.tensors) {
    if (t.file != f.file || !t.alias_of.empty()) continue;
    for (const auto& [slot, se] : t.slots) {
      expected.insert(se.path);
      auto f = out.datasets.find(se.path);
      if (f == out.datasets.end()) {
        p.add(name + " lacks '" + t.fqn + "' (" + slot_name(slot) + ") listed in the manifest");
        continue;
      }
      const StoredDataset& d = f->second;
      if (d.shape != se.shape || d.dtype != se.dtype || d.digest != se.digest) {
        p.add(name + ": '" + t.fqn + "' (" + slot_name(slot) + ") metadata disagree with the manifest (stored " +
              shape_str(d.shape) + " " + d.dtype + " " + digest_hex(d.digest) + ", manifest " + shape_str(se.shape) +
              " " + se.dtype + " " + digest_hex(se.digest) + ")");
        continue;
      }
      const bool want = m.compression.zstd && !d.shape.empty() && d.raw_bytes > 0;
      if (d.compressed != want) {
        p.add(name + ": '" + t.fqn + "' (" + slot_name(slot) + ") is stored " + (d.compressed ? "compressed" : "uncompressed") +
              " but the checkpoint's compression is " + m.compression.str());
      }
    }
  }
  for (const auto& [path_in_shard, d] : out.datasets) {
    if (expected.count(path_in_shard)) continue;
    p.add(name + " holds '" + d.fqn + "' (" + slot_name(d.slot) +
          ") which the manifest places elsewhere or not at all (stored twice?)");
  }
  return true;
}

void check_ties(const Manifest& m, Problems& p) {
  for (const auto& t : m.tensors) {
    if (t.alias_of.empty()) continue;
    const TensorEntry* target = m.find(t.alias_of);
    if (!target || !target->alias_of.empty()) continue;  // check_manifest reports it
    for (const auto& [slot, digest] : t.alias_digests) {
      auto s = target->slots.find(slot);
      if (s == target->slots.end() || s->second.digest != digest) {
        p.add("tied copies differ: '" + t.fqn + "' (" + slot_name(slot) + ", stage " + std::to_string(t.stage) +
              ") does not equal '" + t.alias_of + "' (stage " + std::to_string(target->stage) + ")");
      }
    }
  }
}

}  // namespace pmamba::ckpt
