#include "src/ckpt/manifest.h"

#include <algorithm>
#include <functional>
#include <map>
#include <set>
#include <unordered_map>

#include "src/ckpt/check.h"
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

const Slot kAllSlots[] = {Slot::kParam, Slot::kExpAvg, Slot::kExpAvgSq, Slot::kStep};

}  // namespace

std::map<std::string, int> assign_balanced(const std::vector<std::pair<std::string, int64_t>>& sizes, int parts) {
  std::vector<int64_t> load(static_cast<size_t>(std::max(parts, 1)), 0);
  std::map<std::string, int> out;
  for (const auto& [name, n] : sizes) {
    const auto it = std::min_element(load.begin(), load.end());
    out[name] = static_cast<int>(it - load.begin());
    *it += n;
  }
  return out;
}

std::map<std::string, int> assign_parts(const model::MambaConfig& config, const model::StageSpec& stage, int parts) {
  std::vector<model::ParamInfo> owned;
  std::set<std::string> here;
  for (const auto& p : model::list_parameters(config)) {
    if (!model::stage_owns(p, stage)) continue;
    owned.push_back(p);
    here.insert(p.fqn);
  }
  std::vector<std::pair<std::string, int64_t>> sizes;
  for (const auto& p : owned) {
    if (p.tied_to.empty()) sizes.emplace_back(p.fqn, p.numel());
    if (!p.tied_to.empty() && !here.count(p.tied_to)) sizes.emplace_back(p.fqn, 0);  // an alias holds no data
  }
  std::map<std::string, int> out = assign_balanced(sizes, parts);
  for (const auto& p : owned) {
    if (!p.tied_to.empty() && here.count(p.tied_to)) out[p.fqn] = out.at(p.tied_to);  // with its target
  }
  return out;
}

std::string file_holding(const model::MambaConfig& config, const std::vector<model::StageSpec>& stages, int stage,
                         int parts, const std::string& fqn) {
  const model::StageSpec& s = stages.at(static_cast<size_t>(stage));
  return shard_file_name(s.stage, s.num_stages, assign_parts(config, s, parts).at(fqn), parts);
}

uint64_t train_digest(const ojson& train) {
  const std::string text = train.dump();
  return bytes_digest(text.data(), text.size());
}

namespace {

// One shard's contribution to a manifest: from a scan of the file or from its writer's record.
struct ShardContents {
  int64_t bytes = 0;
  std::vector<StoredDataset> datasets;
  std::vector<AliasToSave> aliases;
};

// The manifest of `stages` x `files_per_stage` shards whose contents `contents` yields (in stage
// and part order), every FQN placed once; throws FormatError for an FQN stored twice or unknown.
Manifest assemble_manifest(const std::string& run_id, const model::MambaConfig& config,
                           const std::vector<model::StageSpec>& stages, int64_t step, const Compression& compression,
                           bool has_optimizer, const ojson& train, int files_per_stage,
                           const std::function<ShardContents(const model::StageSpec&, int, const std::string&)>& contents) {
  if (files_per_stage < 1 || files_per_stage > kMaxFilesPerStage) {
    throw UsageError("files per stage must be in [1, " + std::to_string(kMaxFilesPerStage) + "], not " +
                     std::to_string(files_per_stage));
  }
  Manifest m;
  m.run_id = run_id;
  m.step = step;
  m.config = config;
  m.compression = compression;
  m.has_optimizer = has_optimizer;
  m.train = train;
  std::unordered_map<std::string, TensorEntry> found;
  for (const auto& spec : stages) {
    m.stages.push_back(StageEntry{spec.stage, spec.layer_begin, spec.layer_end, {}});
    for (int part = 0; part < files_per_stage; ++part) {
      const std::string file = shard_file_name(spec.stage, spec.num_stages, part, files_per_stage);
      ShardContents shard = contents(spec, part, file);
      m.stages.back().files.push_back(ShardFile{file, shard.bytes});
      for (auto& d : shard.datasets) {
        auto [it, inserted] = found.try_emplace(d.fqn);
        TensorEntry& t = it->second;
        if (inserted) {
          t.fqn = d.fqn;
          t.stage = spec.stage;
          t.file = file;
        } else if (t.file != file) {
          throw FormatError("'" + d.fqn + "' is stored twice: in " + t.file + " and in " + file);
        }
        d.compressed = false;  // the manifest does not record it; check_shard compares it with the compression
        t.slots[d.slot] = std::move(d);
      }
      for (const auto& a : shard.aliases) {
        auto [it, inserted] = found.try_emplace(a.fqn);
        if (!inserted) throw FormatError("'" + a.fqn + "' is stored twice: in " + it->second.file + " and as an alias in " + file);
        it->second.fqn = a.fqn;
        it->second.stage = spec.stage;
        it->second.file = file;
        it->second.alias_of = a.alias_of;
        it->second.alias_digests = a.digests;
      }
    }
  }
  for (const auto& p : model::list_parameters(config)) {
    auto it = found.find(p.fqn);
    if (it == found.end()) continue;  // check_manifest names what is missing
    m.tensors.push_back(std::move(it->second));
    found.erase(it);
  }
  if (!found.empty()) {
    throw FormatError("shard '" + found.begin()->second.file + "' holds unknown tensor '" + found.begin()->first + "'");
  }
  return m;
}

}  // namespace

Manifest build_manifest(const std::string& dir, const std::string& run_id, const model::MambaConfig& config,
                        const std::vector<model::StageSpec>& stages, int64_t step, const Compression& compression,
                        bool has_optimizer, const ojson& train, int files_per_stage) {
  Manifest m = assemble_manifest(
      run_id, config, stages, step, compression, has_optimizer, train, files_per_stage,
      [&](const model::StageSpec&, int, const std::string& file) {
        const std::string path = fs::join(dir, file);
        if (!fs::is_file(path)) throw FormatError("shard '" + path + "' is missing");
        ShardContents c;
        c.bytes = fs::file_size(path);
        ShardReader shard(path);
        c.datasets = shard.scan();
        c.aliases = shard.aliases();
        return c;
      });
  // What is committed passes every check a reader will make, so a checkpoint that commits loads.
  Problems problems(Problems::Mode::kThrow, "checkpoint '" + dir + "': ");
  check_manifest(m, problems);
  for (const auto& s : m.stages) {
    for (const auto& f : s.files) {
      CheckedShard shard;
      check_shard(m, s, f, dir, problems, shard);
    }
  }
  check_ties(m, problems);
  return m;
}

Manifest build_manifest(const std::string& dir, const std::string& run_id, const model::MambaConfig& config,
                        const std::vector<model::StageSpec>& stages, int64_t step, const Compression& compression,
                        bool has_optimizer, const ojson& train, const std::vector<WrittenShard>& written) {
  const std::string where = "checkpoint '" + dir + "': ";
  if (written.empty()) throw UsageError("internal: a manifest from no written shards");
  const int parts = written.front().header.parts;
  std::map<std::string, const WrittenShard*> by_file;
  for (const auto& w : written) {
    if (!by_file.emplace(w.file, &w).second) throw UsageError("internal: shard '" + w.file + "' reported twice");
  }
  if (written.size() != stages.size() * static_cast<size_t>(std::max(parts, 1))) {
    throw FormatError(where + std::to_string(written.size()) + " shards were written for " +
                      std::to_string(stages.size()) + " stages of " + std::to_string(parts) + " files");
  }
  Manifest m = assemble_manifest(
      run_id, config, stages, step, compression, has_optimizer, train, parts,
      [&](const model::StageSpec& spec, int part, const std::string& file) {
        const std::string path = fs::join(dir, file);
        auto it = by_file.find(file);
        if (it == by_file.end()) throw FormatError("shard '" + path + "' is missing (no writer reported it)");
        const WrittenShard& w = *it->second;
        const ShardHeader& h = w.header;
        if (h.stage != spec.stage || h.num_stages != spec.num_stages || h.layer_begin != spec.layer_begin ||
            h.layer_end != spec.layer_end || h.part != part || h.step != step || h.compression != compression.str()) {
          throw FormatError(where + "shard '" + file + "' was written for stage " + std::to_string(h.stage) + " of " +
                            std::to_string(h.num_stages) + ", part " + std::to_string(h.part) + ", step " +
                            std::to_string(h.step) + ", compression " + h.compression + "; the checkpoint is stage " +
                            std::to_string(spec.stage) + " of " + std::to_string(spec.num_stages) + ", part " +
                            std::to_string(part) + ", step " + std::to_string(step) + ", " + compression.str());
        }
        // The file must still be what was fsynced: a size that moved means something else wrote it.
        const int64_t size = fs::file_size(path);
        if (size != w.bytes) {
          throw FormatError(where + "shard '" + path + "' is " + std::to_string(size) + " bytes but its writer wrote " +
                            std::to_string(w.bytes));
        }
        ShardContents c;
        c.bytes = w.bytes;
        c.datasets = w.datasets;
        c.aliases = w.aliases;
        for (const auto& d : c.datasets) {
          const bool want = compression.zstd && !d.shape.empty() && d.raw_bytes > 0;
          if (d.compressed != want) {
            throw FormatError(where + "shard '" + file + "': '" + d.fqn + "' (" + slot_name(d.slot) + ") was written " +
                              (d.compressed ? "compressed" : "uncompressed") + " but the checkpoint's compression is " +
                              compression.str());
          }
        }
        return c;
      });
  // Every check a reader makes of the manifest itself; a reader's per-shard checks compare the
  // files with these same records, which came from the writer's own HDF5 handles.
  Problems problems(Problems::Mode::kThrow, where);
  check_manifest(m, problems);
  check_ties(m, problems);
  return m;
}

namespace {

ojson slot_json(const StoredDataset& s) {
  return ojson{{"path", s.path}, {"shape", s.shape}, {"dtype", s.dtype}, {"xxh3_64", digest_hex(s.digest)},
               {"stored_bytes", s.stored_bytes}, {"raw_bytes", s.raw_bytes}};
}

}  // namespace

std::string manifest_to_json(const Manifest& m) {
  ojson j;
  j["format"] = kFormatName;
  j["format_version"] = m.format_version;
  if (m.format_version >= 2) j["run_id"] = m.run_id;
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
    ojson e{{"stage", s.stage}, {"layers", {s.layer_begin, s.layer_end}}};
    if (m.format_version >= 3) {
      ojson files = ojson::array();
      for (const auto& f : s.files) files.push_back(ojson{{"file", f.file}, {"bytes", f.bytes}});
      e["files"] = files;
    } else {
      e["file"] = s.files.at(0).file;
      e["bytes"] = s.files.at(0).bytes;
    }
    stages.push_back(e);
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
  if (m.format_version >= 2) j["train_xxh3_64"] = digest_hex(train_digest(m.train));
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
  // nlohmann's lexer takes a NUL byte for the end of the input, so "{...}\0anything" would
  // parse; a JSON text never holds a raw NUL (inside strings it is \u0000).
  if (const size_t nul = text.find('\0'); nul != std::string::npos) {
    throw FormatError(where + ": not valid JSON: a NUL byte at offset " + std::to_string(nul));
  }
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
  throw FormatError("unknown state slot '" + fs::printable(name) + "'");
}

// Typed access to manifest fields: a wrong type, or a fractional number where an integer
// belongs (shape 64.5, format_version 1.5), is an error rather than a silent conversion.
const ojson& field(const ojson& j, const std::string& key, const std::string& where) {
  if (!j.is_object()) throw FormatError(where + " is not a JSON object");
  auto it = j.find(key);
  if (it == j.end()) throw FormatError(where + " lacks '" + key + "'");
  return *it;
}

int64_t as_int(const ojson& v, const std::string& what) {
  if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))) {
    throw FormatError(what + " must be an integer, found " + fs::printable(v.dump()));
  }
  return v.get<int64_t>();
}

std::string as_string(const ojson& v, const std::string& what) {
  if (!v.is_string()) throw FormatError(what + " must be a string, found " + fs::printable(v.dump()));
  return v.get<std::string>();
}

int64_t int_field(const ojson& j, const std::string& key, const std::string& where) {
  return as_int(field(j, key, where), where + "." + key);
}

std::string string_field(const ojson& j, const std::string& key, const std::string& where) {
  return as_string(field(j, key, where), where + "." + key);
}

StoredDataset parse_slot(const ojson& x, const std::string& fqn, Slot s) {
  const std::string where = "tensors['" + fs::printable(fqn) + "']." + slot_name(s);
  StoredDataset d;
  d.fqn = fqn;
  d.slot = s;
  d.path = string_field(x, "path", where);
  const ojson& shape = field(x, "shape", where);
  if (!shape.is_array() || shape.size() > 32) throw FormatError(where + ".shape must be an array of at most 32 integers");
  for (const auto& dim : shape) d.shape.push_back(as_int(dim, where + ".shape"));
  d.dtype = string_field(x, "dtype", where);
  const at::ScalarType type = dtype_from_name(d.dtype);
  d.digest = parse_digest_hex(string_field(x, "xxh3_64", where));
  d.stored_bytes = int_field(x, "stored_bytes", where);
  d.raw_bytes = int_field(x, "raw_bytes", where);
  if (d.path != dataset_path(fqn, s)) {
    throw FormatError(where + ".path is '" + fs::printable(d.path) + "', expected '" + dataset_path(fqn, s) + "'");
  }
  const int64_t numel = checked_numel(d.shape, "'" + fs::printable(fqn) + "'");
  if (d.raw_bytes != numel * static_cast<int64_t>(dtype_size(type))) {
    throw FormatError(where + ".raw_bytes " + std::to_string(d.raw_bytes) + " disagrees with its shape and dtype");
  }
  if (d.stored_bytes < 0) throw FormatError(where + ".stored_bytes is negative");
  return d;
}

// The structure of the manifest (everything but the checks of check.h). Throws FormatError.
Manifest parse_manifest(const std::string& text, const std::string& where) {
  const ojson j = parse_strict(text, where);
  Manifest m;
  if (!j.is_object() || !j.contains("format") || !j.at("format").is_string() || j.at("format") != kFormatName) {
    throw FormatError("not a pmamba checkpoint manifest (format != \"" + std::string(kFormatName) + "\")");
  }
  m.format_version = int_field(j, "format_version", "manifest");
  if (m.format_version > kFormatVersion) {
    throw FormatError("format_version " + std::to_string(m.format_version) + " is newer than this pmamba supports (" +
                      std::to_string(kFormatVersion) + ")");
  }
  if (m.format_version < 1) throw FormatError("invalid format_version " + std::to_string(m.format_version));
  if (m.format_version >= 2) m.run_id = string_field(j, "run_id", "manifest");
  m.step = int_field(j, "step", "manifest");
  if (m.step < 0) throw FormatError("step " + std::to_string(m.step) + " is negative");
  try {
    m.config = model::config_from_json(nlohmann::json::parse(field(j, "config", "manifest").dump()));
  } catch (const model::ConfigError& e) {
    throw FormatError(std::string("bad config: ") + e.what());
  }
  try {
    m.compression = Compression::parse(string_field(j, "compression", "manifest"));
  } catch (const UsageError& e) {
    throw FormatError(e.what());
  }
  const ojson& opt = field(j, "has_optimizer", "manifest");
  if (!opt.is_boolean()) throw FormatError("manifest.has_optimizer must be true or false, found " + fs::printable(opt.dump()));
  m.has_optimizer = opt.get<bool>();
  const ojson& layout = field(j, "layout", "manifest");
  const ojson& stages = field(layout, "stages", "layout");
  if (!stages.is_array() || stages.empty() || stages.size() > 4096) {
    throw FormatError("layout.stages must be an array of 1 to 4096 stages");
  }
  for (const auto& st : stages) {
    StageEntry e;
    const std::string w = "layout.stages[" + std::to_string(m.stages.size()) + "]";
    const int64_t stage = int_field(st, "stage", w);
    if (stage < 0 || stage >= 4096) throw FormatError(w + ".stage " + std::to_string(stage) + " is out of range");
    e.stage = static_cast<int>(stage);
    const ojson& layers = field(st, "layers", w);
    if (!layers.is_array() || layers.size() != 2) throw FormatError(w + ".layers must be [begin, end]");
    e.layer_begin = as_int(layers.at(0), w + ".layers");
    e.layer_end = as_int(layers.at(1), w + ".layers");
    if (m.format_version >= 3) {
      const ojson& files = field(st, "files", w);
      if (!files.is_array() || files.empty() || files.size() > static_cast<size_t>(kMaxFilesPerStage)) {
        throw FormatError(w + ".files must be an array of 1 to " + std::to_string(kMaxFilesPerStage) + " files");
      }
      for (const auto& f : files) {
        const std::string wf = w + ".files[" + std::to_string(e.files.size()) + "]";
        e.files.push_back(ShardFile{string_field(f, "file", wf), int_field(f, "bytes", wf)});
      }
    } else {
      e.files.push_back(ShardFile{string_field(st, "file", w), int_field(st, "bytes", w)});
    }
    m.stages.push_back(e);
  }
  const int64_t num_stages = int_field(layout, "num_stages", "layout");
  if (num_stages != static_cast<int64_t>(m.stages.size())) {
    throw FormatError("layout.num_stages is " + std::to_string(num_stages) + " but layout.stages lists " +
                      std::to_string(m.stages.size()));
  }
  const ojson& partition = field(layout, "partition", "layout");
  if (!partition.is_array() || partition.size() != m.stages.size()) {
    throw FormatError("layout.partition must list the layers of each of the " + std::to_string(m.stages.size()) + " stages");
  }
  for (size_t i = 0; i < m.stages.size(); ++i) {
    const int64_t n = as_int(partition.at(i), "layout.partition");
    if (n != m.stages[i].layer_end - m.stages[i].layer_begin) {
      throw FormatError("layout.partition gives stage " + std::to_string(i) + " " + std::to_string(n) +
                        " layers but its range [" + std::to_string(m.stages[i].layer_begin) + ", " +
                        std::to_string(m.stages[i].layer_end) + ") holds " +
                        std::to_string(m.stages[i].layer_end - m.stages[i].layer_begin));
    }
  }
  const ojson& tensors = field(j, "tensors", "manifest");
  if (!tensors.is_object()) throw FormatError("manifest.tensors must be an object");
  for (auto it = tensors.begin(); it != tensors.end(); ++it) {
    TensorEntry t;
    t.fqn = it.key();
    const ojson& e = it.value();
    const std::string w = "tensors['" + fs::printable(t.fqn) + "']";
    const int64_t stage = int_field(e, "stage", w);
    if (stage < 0 || stage >= 4096) throw FormatError(w + ".stage " + std::to_string(stage) + " is out of range");
    t.stage = static_cast<int>(stage);
    t.file = string_field(e, "file", w);
    if (e.contains("alias_of")) {
      t.alias_of = string_field(e, "alias_of", w);
      const ojson& d = field(e, "xxh3_64", w);
      if (!d.is_object()) throw FormatError(w + ".xxh3_64 must be an object");
      for (auto s = d.begin(); s != d.end(); ++s) {
        t.alias_digests[slot_of(s.key())] = parse_digest_hex(as_string(s.value(), w + ".xxh3_64"));
      }
    }
    for (Slot s : kAllSlots) {
      if (e.contains(slot_name(s))) t.slots[s] = parse_slot(e.at(slot_name(s)), t.fqn, s);
    }
    m.tensors.push_back(std::move(t));
  }
  if (j.contains("train")) m.train = j.at("train");
  if (m.format_version >= 2) {
    const uint64_t recorded = parse_digest_hex(string_field(j, "train_xxh3_64", "manifest"));
    if (recorded != train_digest(m.train)) {
      throw FormatError("the training state does not match its digest train_xxh3_64 (edited or corrupt)");
    }
  }
  // Canonical order, whatever order the file had.
  std::vector<TensorEntry> ordered;
  std::set<std::string> listed;
  for (const auto& p : model::list_parameters(m.config)) {
    for (auto& t : m.tensors) {
      if (t.fqn == p.fqn) {
        ordered.push_back(t);
        listed.insert(t.fqn);
      }
    }
  }
  for (auto& t : m.tensors) {
    if (!listed.count(t.fqn)) ordered.push_back(t);  // unknown: check_manifest reports it
  }
  m.tensors = std::move(ordered);
  return m;
}

}  // namespace

bool manifest_from_json(const std::string& text, const std::string& where, Manifest& out, Problems& problems) {
  try {
    out = parse_manifest(text, where);
  } catch (const FormatError& e) {
    problems.add(where + ": " + e.what());
    return false;
  } catch (const UsageError& e) {
    problems.add(where + ": " + e.what());
    return false;
  } catch (const nlohmann::json::exception& e) {
    problems.add(where + ": malformed manifest: " + e.what());
    return false;
  }
  if (problems.mode() == Problems::Mode::kThrow) {
    Problems local(Problems::Mode::kThrow, where + ": ");
    check_manifest(out, local);
  } else {
    Problems local(Problems::Mode::kCollect);
    check_manifest(out, local);
    for (const auto& p : local.list()) problems.add(where + ": " + p);
  }
  return true;
}

Manifest manifest_from_json(const std::string& text, const std::string& where) {
  Manifest m;
  Problems problems(Problems::Mode::kThrow);
  manifest_from_json(text, where, m, problems);
  return m;
}

}  // namespace pmamba::ckpt
