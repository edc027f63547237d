#include "src/ckpt/inspect.h"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "src/ckpt/checkpoint.h"
#include "src/ckpt/fs.h"
#include "src/ckpt/text.h"
#include "src/model/fqn.h"

namespace pmamba::ckpt {

namespace {

using ojson = nlohmann::ordered_json;

Manifest load_manifest(const std::string& path, std::string& dir) {
  dir = resolve_checkpoint_dir(path);
  const std::string mpath = fs::join(dir, kManifestName);
  return manifest_from_json(fs::read_file(mpath), "manifest '" + mpath + "'");
}

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

}  // namespace

void print_info(const std::string& path, std::ostream& out, bool json) {
  std::string dir;
  const Manifest m = load_manifest(path, dir);
  std::vector<int64_t> stage_raw(m.stages.size(), 0), stage_stored(m.stages.size(), 0), stage_tensors(m.stages.size(), 0);
  int64_t aliases = 0;
  for (const auto& t : m.tensors) {
    if (!t.alias_of.empty()) {
      ++aliases;
      continue;
    }
    stage_tensors[static_cast<size_t>(t.stage)] += 1;
    for (const auto& kv : t.slots) {
      stage_raw[static_cast<size_t>(t.stage)] += kv.second.raw_bytes;
      stage_stored[static_cast<size_t>(t.stage)] += kv.second.stored_bytes;
    }
  }
  const int64_t params = model::count_parameters(m.config);
  const int64_t raw = m.total_raw_bytes(), stored = m.total_stored_bytes();
  int64_t file_bytes = 0;
  for (const auto& s : m.stages)
    for (const auto& f : s.files) file_bytes += f.bytes;
  if (json) {
    ojson j;
    j["checkpoint"] = dir;
    j["step"] = m.step;
    j["format_version"] = m.format_version;
    j["run_id"] = m.run_id;
    j["config"] = ojson::parse(model::config_to_json_string(m.config));
    j["parameters"] = params;
    j["tensors"] = m.tensors.size() - static_cast<size_t>(aliases);
    j["aliases"] = aliases;
    j["has_optimizer"] = m.has_optimizer;
    j["compression"] = m.compression.str();
    j["raw_bytes"] = raw;
    j["stored_bytes"] = stored;
    j["file_bytes"] = file_bytes;
    ojson stages = ojson::array();
    for (size_t i = 0; i < m.stages.size(); ++i) {
      const auto& s = m.stages[i];
      stages.push_back(ojson{{"stage", s.stage},
                             {"layers", {s.layer_begin, s.layer_end}},
                             {"files", [&] {
                                ojson files = ojson::array();
                                for (const auto& f : s.files) files.push_back(ojson{{"file", f.file}, {"bytes", f.bytes}});
                                return files;
                              }()},
                             {"tensors", stage_tensors[i]},
                             {"raw_bytes", stage_raw[i]},
                             {"compression_ratio", stage_stored[i] ? double(stage_raw[i]) / double(stage_stored[i]) : 1.0}});
    }
    j["layout"] = stages;
    j["train"] = m.train;
    out << j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
    return;
  }
  const auto& c = m.config;
  out << "checkpoint  " << dir << "\n";
  out << "step        " << m.step << "  (format_version " << m.format_version << ")\n";
  out << "run         " << (m.run_id.empty() ? "(none: version 1)" : m.run_id) << "\n";
  out << "model       " << model::describe(c) << "\n";
  out << "parameters  " << with_commas(params) << " (tie counted once)\n";
  out << "tensors     " << (m.tensors.size() - static_cast<size_t>(aliases)) << " stored"
      << (aliases ? " + " + std::to_string(aliases) + " tied alias" : "")
      << (m.has_optimizer ? ", with AdamW state (exp_avg, exp_avg_sq, step)" : ", no optimizer state") << "\n";
  out << "compression " << m.compression.str() << "\n";
  out << "layout      " << m.stages.size() << " stage" << (m.stages.size() == 1 ? "" : "s") << "\n";
  for (size_t i = 0; i < m.stages.size(); ++i) {
    const auto& s = m.stages[i];
    int64_t bytes = 0;
    for (const auto& f : s.files) bytes += f.bytes;
    const std::string files = s.files.size() == 1 ? s.files[0].file : std::to_string(s.files.size()) + " files";
    char line[360];
    std::snprintf(line, sizeof line, "  stage %-3d layers [%lld, %lld)  %-20s %14s bytes %-12s %4lld tensors  ratio %s\n",
                  s.stage, static_cast<long long>(s.layer_begin), static_cast<long long>(s.layer_end), files.c_str(),
                  with_commas(bytes).c_str(), ("(" + format_bytes(bytes) + ")").c_str(),
                  static_cast<long long>(stage_tensors[i]),
                  format_ratio(stage_stored[i] ? double(stage_raw[i]) / double(stage_stored[i]) : 1.0).c_str());
    out << line;
    if (s.files.size() > 1) {
      for (const auto& f : s.files) out << "      " << f.file << "  " << format_bytes_exact(f.bytes) << "\n";
    }
  }
  out << "bytes       " << format_bytes_exact(raw) << " raw, " << format_bytes_exact(stored) << " stored ("
      << format_ratio(stored ? double(raw) / double(stored) : 1.0) << "), " << format_bytes_exact(file_bytes)
      << " in files\n";
  // The training state as a table, nested objects flattened (data.seq_len).
  const auto rows = flatten_json(m.train);
  if (rows.empty()) {
    out << "train       (none recorded)\n";
  } else {
    out << "train\n" << two_column_table(rows, "  ");
  }
}

void print_ls(const std::string& path, std::ostream& out, bool json, bool all) {
  std::string dir;
  const Manifest m = load_manifest(path, dir);
  const Slot slots[] = {Slot::kParam, Slot::kExpAvg, Slot::kExpAvgSq, Slot::kStep};
  ojson rows = ojson::array();
  for (const auto& t : m.tensors) {
    if (!t.alias_of.empty()) {
      const TensorEntry& target = m.resolve(t.fqn);
      const StoredDataset& p = target.slots.at(Slot::kParam);
      rows.push_back(ojson{{"fqn", t.fqn}, {"slot", "param"}, {"shape", p.shape}, {"dtype", p.dtype}, {"stage", t.stage},
                           {"stored_bytes", 0}, {"xxh3_64", digest_hex(t.alias_digests.at(Slot::kParam))},
                           {"alias_of", t.alias_of}});
      continue;
    }
    for (Slot s : slots) {
      auto it = t.slots.find(s);
      if (it == t.slots.end() || (!all && s != Slot::kParam)) continue;
      const StoredDataset& e = it->second;
      rows.push_back(ojson{{"fqn", t.fqn}, {"slot", slot_name(s)}, {"shape", e.shape}, {"dtype", e.dtype},
                           {"stage", t.stage}, {"stored_bytes", e.stored_bytes}, {"xxh3_64", digest_hex(e.digest)}});
    }
  }
  if (json) {
    out << ojson{{"checkpoint", dir}, {"step", m.step}, {"tensors", rows}}.dump(-1, ' ', false, ojson::error_handler_t::replace)
        << "\n";
    return;
  }
  char line[512];
  std::snprintf(line, sizeof line, "%-48s %-16s %-8s %-9s %12s %10s  %s\n", "fqn", "shape", "dtype", "stage",
                "stored bytes", "size", "xxh3_64");
  out << line;
  for (const auto& r : rows) {
    std::string name = r["fqn"].get<std::string>();
    if (r["slot"] != "param") name += ":" + r["slot"].get<std::string>();
    const int64_t bytes = r["stored_bytes"].get<int64_t>();
    std::snprintf(line, sizeof line, "%-48s %-16s %-8s stage %-3d %12s %10s  %s%s\n", name.c_str(),
                  shape_text(r["shape"].get<std::vector<int64_t>>()).c_str(), r["dtype"].get<std::string>().c_str(),
                  r["stage"].get<int>(), with_commas(bytes).c_str(), format_bytes(bytes).c_str(),
                  r["xxh3_64"].get<std::string>().c_str(),
                  r.contains("alias_of") ? ("  -> alias of " + r["alias_of"].get<std::string>()).c_str() : "");
    out << line;
  }
}

void print_params(const model::MambaConfig& config, std::ostream& out, bool json) {
  const auto params = model::list_parameters(config);
  const int64_t total = model::count_parameters(config);
  if (json) {
    ojson rows = ojson::array();
    for (const auto& p : params) {
      ojson row = {{"fqn", p.fqn}, {"shape", p.shape}, {"numel", p.numel()}, {"layer", p.layer},
                   {"kind", p.layer >= 0 ? model::layer_kind_name(config.layer_kind(p.layer)) : "lm"},
                   {"no_weight_decay", p.no_weight_decay}};
      if (!p.tied_to.empty()) row["tied_to"] = p.tied_to;
      rows.push_back(std::move(row));
    }
    ojson j = {{"config", model::config_to_json(config)}, {"parameters", rows},
               {"tensors", params.size()}, {"total", total}};
    out << j.dump() << "\n";
    return;
  }
  out << "model  " << model::describe(config) << "\n";
  char line[400];
  for (const auto& p : params) {
    std::snprintf(line, sizeof line, "%-48s %-20s %15s%s\n", p.fqn.c_str(), shape_text(p.shape).c_str(),
                  with_commas(p.numel()).c_str(), p.tied_to.empty() ? "" : ("  (tied to " + p.tied_to + ")").c_str());
    out << line;
  }
  out << "total  " << with_commas(total) << " parameters in " << params.size() << " tensors (a tied head counted once)\n";
}

}  // namespace pmamba::ckpt
