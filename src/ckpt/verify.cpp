#include "src/ckpt/verify.h"

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "src/ckpt/checkpoint.h"
#include "src/ckpt/errors.h"
#include "src/ckpt/fs.h"
#include "src/ckpt/thread_pool.h"

namespace pmamba::ckpt {

void verify_contents(const std::string& dir, const Manifest& m, const VerifyOptions& o, VerifyReport& r) {
  h5::Silence quiet;
  ThreadPool pool(o.threads > 0 ? o.threads : ThreadPool::default_threads());
  std::map<std::string, std::unique_ptr<ShardReader>> shards;
  std::map<std::string, std::map<std::string, DatasetInfo>> found;
  for (const auto& s : m.stages) {
    const std::string path = fs::join(dir, s.file);
    if (!fs::is_file(path)) {
      r.problems.push_back("missing shard '" + s.file + "' (stage " + std::to_string(s.stage) + ")");
      continue;
    }
    const int64_t size = fs::file_size(path);
    if (size != s.bytes) {
      r.problems.push_back("shard '" + s.file + "' is " + std::to_string(size) + " bytes but the manifest records " +
                           std::to_string(s.bytes) + (size < s.bytes ? " (truncated)" : ""));
    }
    try {
      auto reader = std::make_unique<ShardReader>(path);
      const ShardHeader& h = reader->header();
      if (h.stage != s.stage || h.num_stages != static_cast<int>(m.stages.size()) || h.layer_begin != s.layer_begin ||
          h.layer_end != s.layer_end || h.step != m.step) {
        r.problems.push_back("shard '" + s.file + "' header disagrees with the manifest (stage " +
                             std::to_string(h.stage) + ", layers [" + std::to_string(h.layer_begin) + ", " +
                             std::to_string(h.layer_end) + "), step " + std::to_string(h.step) + ")");
      }
      for (auto& d : reader->scan()) found[s.file].emplace(d.path, std::move(d));
      shards[s.file] = std::move(reader);
    } catch (const Error& e) {
      r.problems.push_back(e.what());
    }
  }
  // Every dataset a shard holds must be one the manifest assigns to it, and vice versa.
  std::map<std::string, std::set<std::string>> expected;
  for (const auto& t : m.tensors) {
    for (const auto& kv : t.slots) expected[t.file].insert(kv.second.path);
  }
  for (const auto& [file, datasets] : found) {
    for (const auto& [path, d] : datasets) {
      if (!expected[file].count(path)) {
        r.problems.push_back("unknown dataset '" + path + "' in shard '" + file + "' ('" + d.fqn + "', " +
                             slot_name(d.slot) + ", not in the manifest)");
      }
    }
  }
  for (const auto& t : m.tensors) {
    for (const auto& [slot, se] : t.slots) {
      const std::string what = "'" + t.fqn + "' (" + slot_name(slot) + ") in '" + t.file + "'";
      auto sh = shards.find(t.file);
      if (sh == shards.end()) continue;  // shard problem already reported
      auto d = found[t.file].find(se.path);
      if (d == found[t.file].end()) {
        r.problems.push_back("shard '" + t.file + "' lacks " + what.substr(0, what.find(" in '")));
        continue;
      }
      if (d->second.shape != se.shape || d->second.dtype != se.dtype) {
        r.problems.push_back(what + ": stored shape/dtype disagree with the manifest");
        continue;
      }
      if (d->second.digest != se.digest) {
        r.problems.push_back(what + ": digest attribute " + digest_hex(d->second.digest) + " != manifest " +
                             digest_hex(se.digest));
      }
      try {
        at::Tensor data = at::empty(se.shape, at::TensorOptions().dtype(dtype_from_name(se.dtype)));
        sh->second->read(d->second, data, &pool);
        const uint64_t got = tensor_digest(data);
        ++r.datasets;
        r.bytes += static_cast<int64_t>(data.nbytes());
        if (got != se.digest) {
          r.problems.push_back("digest mismatch for " + what + ": recorded " + digest_hex(se.digest) +
                               ", data hashes to " + digest_hex(got));
        }
        if (o.finite && data.is_floating_point()) {
          const int64_t bad = (~at::isfinite(data)).sum().item<int64_t>();
          if (bad > 0) r.problems.push_back(what + " holds " + std::to_string(bad) + " NaN/Inf values");
        }
      } catch (const Error& e) {
        r.problems.push_back("cannot read " + what + ": " + e.what());
      }
    }
  }
  for (const auto& t : m.tensors) {
    if (t.alias_of.empty()) continue;
    const TensorEntry* target = m.find(t.alias_of);
    if (!target) continue;  // validate_manifest reported it
    for (const auto& [slot, digest] : t.alias_digests) {
      auto s = target->slots.find(slot);
      if (s == target->slots.end() || s->second.digest != digest) {
        r.problems.push_back("tied copies differ: '" + t.fqn + "' (" + slot_name(slot) + ", stage " +
                             std::to_string(t.stage) + ") does not equal '" + t.alias_of + "' (stage " +
                             std::to_string(target->stage) + ")");
      }
    }
  }
}

VerifyReport verify_checkpoint(const std::string& path, const VerifyOptions& o) {
  VerifyReport r;
  r.dir = resolve_checkpoint_dir(path);
  const std::string mpath = fs::join(r.dir, kManifestName);
  Manifest m;
  try {
    m = manifest_from_json(fs::read_file(mpath), "manifest");
  } catch (const Error& e) {
    r.problems.push_back(e.what());
    return r;
  }
  r.step = m.step;
  verify_contents(r.dir, m, o, r);
  return r;
}

void print_verify(const VerifyReport& r, std::ostream& out, bool json) {
  if (json) {
    nlohmann::ordered_json j;
    j["checkpoint"] = r.dir;
    j["step"] = r.step;
    j["ok"] = r.ok();
    j["datasets_checked"] = r.datasets;
    j["bytes_checked"] = r.bytes;
    j["problems"] = r.problems;
    out << j.dump() << "\n";
    return;
  }
  for (const auto& p : r.problems) out << "problem: " << p << "\n";
  out << (r.ok() ? "OK" : "INVALID") << ": " << r.dir << " (step " << r.step << "), " << r.datasets
      << " datasets, " << r.bytes << " bytes checked, " << r.problems.size() << " problem"
      << (r.problems.size() == 1 ? "" : "s") << "\n";
}

}  // namespace pmamba::ckpt
