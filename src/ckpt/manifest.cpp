#include "src/ckpt/manifest.h"

#include <set>
#include <unordered_map>

#include "src/ckpt/errors.h"
#include "src/ckpt/fs.h"
#include "src/ckpt/shard.h"
#include "src/model/errors.h"
#include "src/model/fqn.h"

namespace pmamba::ckpt {

using ojson = nlohmann::ordered_json;

const TensorEntry* Manifest::find(const std::string& fqn) const {
  for (const auto& t : tensors) {
    if (t.fqn == fqn) return &t;
  }
  return nullptr;
}

const TensorEntry& Manifest::resolve(const std::string& fqn) const {
  const TensorEntry* t = find(fqn);
  if (!t) throw FormatError("checkpoint has no tensor '" + fqn + "'");
  if (!t->alias_of.empty()) {
    const TensorEntry* target = find(t->alias_of);
    if (!target || !target->alias_of.empty()) {
      throw FormatError("'" + fqn + "' is an alias of '" + t->alias_of + "', which is not stored");
    }
    return *target;
  }
  return *t;
}

std::vector<model::StageSpec> Manifest::stage_specs() const {
  std::vector<model::StageSpec> out;
  for (const auto& s : stages) {
    out.push_back(model::StageSpec{s.stage, static_cast<int>(stages.size()), s.layer_begin, s.layer_end});
  }
  return out;
}

int64_t Manifest::total_stored_bytes() const {
  int64_t n = 0;
  for (const auto& t : tensors)
    for (const auto& kv : t.slots) n += kv.second.stored_bytes;
  return n;
}

int64_t Manifest::total_raw_bytes() const {
  int64_t n = 0;
  for (const auto& t : tensors)
    for (const auto& kv : t.slots) n += kv.second.raw_bytes;
  return n;
}

namespace {

const Slot kOptimSlots[] = {Slot::kExpAvg, Slot::kExpAvgSq, Slot::kStep};
const Slot kAllSlots[] = {Slot::kParam, Slot::kExpAvg, Slot::kExpAvgSq, Slot::kStep};

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

bool is_float_dtype(const std::string& d) {
  return d == "float32" || d == "bfloat16" || d == "float16" || d == "float64";
}

}  // namespace

void validate_manifest(const Manifest& m, const std::string& where) {
  const auto fail = [&](const std::string& what) { throw FormatError(where + ": " + what); };
  const int n = static_cast<int>(m.stages.size());
  if (n < 1) fail("layout lists no stages");
  int64_t next = 0;
  for (int i = 0; i < n; ++i) {
    const StageEntry& s = m.stages[static_cast<size_t>(i)];
    if (s.stage != i) fail("layout stage " + std::to_string(i) + " is numbered " + std::to_string(s.stage));
    if (s.layer_begin != next || s.layer_end < s.layer_begin) {
      fail("stage " + std::to_string(i) + " holds layers [" + std::to_string(s.layer_begin) + ", " +
           std::to_string(s.layer_end) + ") but should start at layer " + std::to_string(next));
    }
    if (s.file != shard_file_name(i, n)) {
      fail("stage " + std::to_string(i) + " file is '" + s.file + "', expected '" + shard_file_name(i, n) + "'");
    }
    next = s.layer_end;
  }
  if (next != m.config.n_layer) {
    fail("layout covers " + std::to_string(next) + " layers but the config has n_layer = " +
         std::to_string(m.config.n_layer));
  }
  const std::vector<model::StageSpec> specs = m.stage_specs();
  const std::vector<model::ParamInfo> params = model::list_parameters(m.config);
  std::set<std::string> known;
  for (const auto& p : params) known.insert(p.fqn);
  std::set<std::string> seen;
  for (const auto& t : m.tensors) {
    if (!known.count(t.fqn)) fail("unknown tensor '" + t.fqn + "' (not a parameter of this config)");
    if (!seen.insert(t.fqn).second) fail("tensor '" + t.fqn + "' is listed twice");
  }
  for (const auto& p : params) {
    const TensorEntry* t = m.find(p.fqn);
    const int owner = model::owner_stage(p, specs);
    if (!t) fail("checkpoint lacks '" + p.fqn + "' (expected in " + shard_file_name(owner, n) + ")");
    if (t->stage != owner) {
      fail("'" + p.fqn + "' is stored by stage " + std::to_string(t->stage) + " but stage " +
           std::to_string(owner) + " owns it in this layout");
    }
    if (t->file != shard_file_name(owner, n)) fail("'" + p.fqn + "' names file '" + t->file + "'");
    if (!p.tied_to.empty()) {
      if (t->alias_of != p.tied_to) {
        fail("'" + p.fqn + "' is tied to '" + p.tied_to + "' but is not stored as its alias");
      }
      if (!t->alias_digests.count(Slot::kParam)) fail("alias '" + p.fqn + "' has no digest");
      continue;
    }
    if (!t->alias_of.empty()) fail("'" + p.fqn + "' is stored as an alias but the config does not tie it");
    auto slot = t->slots.find(Slot::kParam);
    if (slot == t->slots.end()) fail("'" + p.fqn + "' has no parameter data");
    if (slot->second.shape != p.shape) {
      fail("'" + p.fqn + "' has shape " + shape_str(slot->second.shape) + " but the config expects " +
           shape_str(p.shape));
    }
    if (!is_float_dtype(slot->second.dtype)) fail("'" + p.fqn + "' has dtype " + slot->second.dtype);
    if (m.has_optimizer) {
      for (Slot s : kOptimSlots) {
        auto it = t->slots.find(s);
        if (it == t->slots.end()) fail("'" + p.fqn + "' lacks optimizer state '" + slot_name(s) + "'");
        const std::vector<int64_t> expect = s == Slot::kStep ? std::vector<int64_t>{} : p.shape;
        if (it->second.shape != expect) {
          fail("optimizer state '" + std::string(slot_name(s)) + "' of '" + p.fqn + "' has shape " +
               shape_str(it->second.shape) + " but should have " + shape_str(expect));
        }
        const bool ok = s == Slot::kStep ? it->second.dtype == "int64" : it->second.dtype == "float32";
        if (!ok) fail("optimizer state '" + std::string(slot_name(s)) + "' of '" + p.fqn + "' has dtype " + it->second.dtype);
      }
    } else if (t->slots.size() != 1) {
      fail("'" + p.fqn + "' carries optimizer state but has_optimizer is false");
    }
  }
}

Manifest build_manifest(const std::string& dir, const model::MambaConfig& config,
                        const std::vector<model::StageSpec>& stages, int64_t step,
                        const Compression& compression, bool has_optimizer, const ojson& train) {
  Manifest m;
  m.step = step;
  m.config = config;
  m.compression = compression;
  m.has_optimizer = has_optimizer;
  m.train = train;
  const std::string config_json = model::config_to_json_string(config);
  std::unordered_map<std::string, TensorEntry> found;
  for (const auto& spec : stages) {
    const std::string file = shard_file_name(spec.stage, spec.num_stages);
    const std::string path = fs::join(dir, file);
    ShardReader shard(path);
    const ShardHeader& h = shard.header();
    if (h.stage != spec.stage || h.num_stages != spec.num_stages || h.layer_begin != spec.layer_begin ||
        h.layer_end != spec.layer_end) {
      throw FormatError("shard '" + path + "' describes stage " + std::to_string(h.stage) + " of " +
                        std::to_string(h.num_stages) + " with layers [" + std::to_string(h.layer_begin) + ", " +
                        std::to_string(h.layer_end) + "), not the layout being committed");
    }
    if (h.step != step) {
      throw FormatError("shard '" + path + "' is for step " + std::to_string(h.step) + ", not " + std::to_string(step));
    }
    if (h.config_json != config_json) throw FormatError("shard '" + path + "' was written for a different config");
    m.stages.push_back(StageEntry{spec.stage, spec.layer_begin, spec.layer_end, file, fs::file_size(path)});
    for (const auto& d : shard.scan()) {
      auto [it, inserted] = found.try_emplace(d.fqn);
      TensorEntry& t = it->second;
      if (inserted) {
        t.fqn = d.fqn;
        t.stage = spec.stage;
        t.file = file;
      } else if (t.file != file) {
        throw FormatError("'" + d.fqn + "' is stored twice: in " + t.file + " and in " + file);
      }
      t.slots[d.slot] = SlotEntry{d.path, d.shape, d.dtype, d.digest, d.stored_bytes, d.raw_bytes};
    }
    for (const auto& a : shard.aliases()) {
      auto [it, inserted] = found.try_emplace(a.fqn);
      if (!inserted) throw FormatError("'" + a.fqn + "' is stored twice: in " + it->second.file + " and as an alias in " + file);
      it->second.fqn = a.fqn;
      it->second.stage = spec.stage;
      it->second.file = file;
      it->second.alias_of = a.alias_of;
      it->second.alias_digests = a.digests;
    }
  }
  for (const auto& p : model::list_parameters(config)) {
    auto it = found.find(p.fqn);
    if (it == found.end()) continue;  // validate_manifest names what is missing
    m.tensors.push_back(std::move(it->second));
    found.erase(it);
  }
  if (!found.empty()) {
    throw FormatError("shard '" + found.begin()->second.file + "' holds unknown tensor '" + found.begin()->first + "'");
  }
  validate_manifest(m, "checkpoint '" + dir + "'");
  // The tie must have held when the stages wrote their copies.
  for (const auto& t : m.tensors) {
    if (t.alias_of.empty()) continue;
    const TensorEntry& target = m.resolve(t.fqn);
    for (const auto& [slot, digest] : t.alias_digests) {
      auto s = target.slots.find(slot);
      if (s == target.slots.end() || s->second.digest != digest) {
        throw FormatError("tied copies differ: '" + t.fqn + "' (" + slot_name(slot) + ", stage " +
                          std::to_string(t.stage) + ") does not equal '" + t.alias_of + "' (stage " +
                          std::to_string(target.stage) + ")");
      }
    }
  }
  return m;
}

namespace {

ojson slot_json(const SlotEntry& s) {
  return ojson{{"path", s.path}, {"shape", s.shape}, {"dtype", s.dtype}, {"xxh3_64", digest_hex(s.digest)},
               {"stored_bytes", s.stored_bytes}, {"raw_bytes", s.raw_bytes}};
}

}  // namespace

std::string manifest_to_json(const Manifest& m) {
  ojson j;
  j["format"] = kFormatName;
  j["format_version"] = m.format_version;
  j["step"] = m.step;
  j["config"] = ojson::parse(model::config_to_json_string(m.config));
  j["compression"] = m.compression.str();
  j["has_optimizer"] = m.has_optimizer;
  ojson layout;
  layout["num_stages"] = m.stages.size();
  ojson partition = ojson::array();
  ojson stages = ojson::array();
  for (const auto& s : m.stages) {
    partition.push_back(s.layer_end - s.layer_begin);
    stages.push_back(ojson{{"stage", s.stage}, {"layers", {s.layer_begin, s.layer_end}}, {"file", s.file}, {"bytes", s.bytes}});
  }
  layout["partition"] = partition;
  layout["stages"] = stages;
  j["layout"] = layout;
  ojson tensors = ojson::object();
  for (const auto& t : m.tensors) {
    ojson e;
    e["stage"] = t.stage;
    e["file"] = t.file;
    if (!t.alias_of.empty()) {
      e["alias_of"] = t.alias_of;
      ojson d = ojson::object();
      for (Slot s : kAllSlots) {
        auto it = t.alias_digests.find(s);
        if (it != t.alias_digests.end()) d[slot_name(s)] = digest_hex(it->second);
      }
      e["xxh3_64"] = d;
    }
    for (Slot s : kAllSlots) {
      auto it = t.slots.find(s);
      if (it != t.slots.end()) e[slot_name(s)] = slot_json(it->second);
    }
    tensors[t.fqn] = e;
  }
  j["tensors"] = tensors;
  j["train"] = m.train;
  // One line per top-level key and per tensor: small, diffable, still valid JSON.
  std::string out = "{\n";
  bool first_key = true;
  for (auto it = j.begin(); it != j.end(); ++it) {
    out += first_key ? "" : ",\n";
    first_key = false;
    out += " " + ojson(it.key()).dump() + ": ";
    if (it.key() != "tensors") {
      out += it.value().dump();
      continue;
    }
    out += "{\n";
    bool first_t = true;
    for (auto t = it.value().begin(); t != it.value().end(); ++t) {
      out += first_t ? "" : ",\n";
      first_t = false;
      out += "  " + ojson(t.key()).dump() + ": " + t.value().dump();
    }
    out += "\n }";
  }
  return out + "\n}\n";
}

namespace {

// JSON objects with a repeated key would silently keep the last value; a checkpoint index
// must not, so the parse callback rejects them.
ojson parse_strict(const std::string& text, const std::string& where) {
  std::vector<std::set<std::string>> keys;
  std::string duplicate;
  auto cb = [&](int, ojson::parse_event_t ev, ojson& parsed) {
    if (ev == ojson::parse_event_t::object_start) keys.emplace_back();
    else if (ev == ojson::parse_event_t::object_end && !keys.empty()) keys.pop_back();
    else if (ev == ojson::parse_event_t::key && !keys.empty()) {
      const std::string k = parsed.get<std::string>();
      if (!keys.back().insert(k).second && duplicate.empty()) duplicate = k;
    }
    return true;
  };
  ojson j;
  try {
    j = ojson::parse(text, cb);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(where + ": not valid JSON: " + e.what());
  }
  if (!duplicate.empty()) throw FormatError(where + ": key '" + duplicate + "' appears twice");
  return j;
}

Slot slot_of(const std::string& name) {
  for (Slot s : kAllSlots) {
    if (name == slot_name(s)) return s;
  }
  throw FormatError("unknown state slot '" + name + "'");
}

}  // namespace

Manifest manifest_from_json(const std::string& text, const std::string& where) {
  const ojson j = parse_strict(text, where);
  Manifest m;
  try {
    if (!j.is_object() || j.value("format", "") != kFormatName) {
      throw FormatError("not a pmamba checkpoint manifest (format != \"" + std::string(kFormatName) + "\")");
    }
    m.format_version = j.at("format_version").get<int64_t>();
    if (m.format_version > kFormatVersion) {
      throw FormatError("format_version " + std::to_string(m.format_version) + " is newer than this pmamba supports (" +
                        std::to_string(kFormatVersion) + ")");
    }
    if (m.format_version < 1) throw FormatError("invalid format_version " + std::to_string(m.format_version));
    m.step = j.at("step").get<int64_t>();
    try {
      m.config = model::config_from_json_string(j.at("config").dump());
    } catch (const model::ConfigError& e) {
      throw FormatError(std::string("bad config: ") + e.what());
    }
    m.compression = Compression::parse(j.at("compression").get<std::string>());
    m.has_optimizer = j.at("has_optimizer").get<bool>();
    for (const auto& s : j.at("layout").at("stages")) {
      StageEntry e;
      e.stage = s.at("stage").get<int>();
      e.layer_begin = s.at("layers").at(0).get<int64_t>();
      e.layer_end = s.at("layers").at(1).get<int64_t>();
      e.file = s.at("file").get<std::string>();
      e.bytes = s.at("bytes").get<int64_t>();
      m.stages.push_back(e);
    }
    const ojson& tensors = j.at("tensors");
    for (auto it = tensors.begin(); it != tensors.end(); ++it) {
      TensorEntry t;
      t.fqn = it.key();
      const ojson& e = it.value();
      t.stage = e.at("stage").get<int>();
      t.file = e.at("file").get<std::string>();
      if (e.contains("alias_of")) {
        t.alias_of = e.at("alias_of").get<std::string>();
        const ojson& d = e.at("xxh3_64");
        for (auto s = d.begin(); s != d.end(); ++s) t.alias_digests[slot_of(s.key())] = parse_digest_hex(s.value().get<std::string>());
      }
      for (Slot s : kAllSlots) {
        if (!e.contains(slot_name(s))) continue;
        const ojson& x = e.at(slot_name(s));
        SlotEntry se;
        se.path = x.at("path").get<std::string>();
        se.shape = x.at("shape").get<std::vector<int64_t>>();
        se.dtype = x.at("dtype").get<std::string>();
        dtype_from_name(se.dtype);
        se.digest = parse_digest_hex(x.at("xxh3_64").get<std::string>());
        se.stored_bytes = x.at("stored_bytes").get<int64_t>();
        se.raw_bytes = x.at("raw_bytes").get<int64_t>();
        if (se.path != dataset_path(t.fqn, s)) {
          throw FormatError("'" + t.fqn + "' " + slot_name(s) + " path is '" + se.path + "', expected '" +
                            dataset_path(t.fqn, s) + "'");
        }
        int64_t numel = 1;
        for (int64_t d : se.shape) {
          if (d < 0 || (d > 0 && numel > (int64_t{1} << 50) / d)) throw FormatError("'" + t.fqn + "' declares an absurd shape");
          numel *= d;
        }
        if (se.raw_bytes != numel * static_cast<int64_t>(dtype_size(dtype_from_name(se.dtype)))) {
          throw FormatError("'" + t.fqn + "' " + slot_name(s) + " raw_bytes disagrees with its shape and dtype");
        }
        t.slots[s] = se;
      }
      m.tensors.push_back(std::move(t));
    }
    if (j.contains("train")) m.train = j.at("train");
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(where + ": malformed manifest: " + e.what());
  } catch (const FormatError& e) {
    throw FormatError(where + ": " + e.what());
  } catch (const UsageError& e) {
    throw FormatError(where + ": " + e.what());
  }
  // Canonical order, whatever order the file had.
  std::vector<TensorEntry> ordered;
  for (const auto& p : model::list_parameters(m.config)) {
    for (auto& t : m.tensors) {
      if (t.fqn == p.fqn) ordered.push_back(t);
    }
  }
  for (auto& t : m.tensors) {
    bool listed = false;
    for (const auto& o : ordered) listed = listed || o.fqn == t.fqn;
    if (!listed) ordered.push_back(t);  // unknown: validate_manifest reports it
  }
  m.tensors = std::move(ordered);
  validate_manifest(m, where);
  return m;
}

}  // namespace pmamba::ckpt
