#include "src/ckpt/checkpoint.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <future>

#include "src/ckpt/errors.h"
#include "src/ckpt/fault.h"
#include "src/ckpt/fs.h"
#include "src/ckpt/thread_pool.h"

namespace pmamba::ckpt {

namespace {

bool is_committed(const std::string& dir) { return fs::is_file(fs::join(dir, kManifestName)); }

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace

std::string begin_step_dir(const std::string& root, int64_t step) {
  if (fs::exists(root) && !fs::is_dir(root)) {
    throw IoError("cannot write a checkpoint to '" + root + "': it exists and is not a directory");
  }
  fs::make_dirs(root);
  static std::atomic<int> counter{0};
  const auto nonce = std::chrono::steady_clock::now().time_since_epoch().count() % 1000000;
  const std::string tmp = fs::join(root, step_dir_name(step) + ".tmp-" + std::to_string(::getpid()) + "-" +
                                             std::to_string(nonce) + "-" + std::to_string(counter++));
  fs::make_dirs(tmp);
  return tmp;
}

void abort_step_dir(const std::string& tmp_dir) noexcept {
  try {
    fs::remove_tree(tmp_dir);
  } catch (...) {
  }
}

std::vector<int64_t> committed_steps(const std::string& root) {
  std::vector<int64_t> steps;
  if (!fs::is_dir(root)) return steps;
  for (const auto& name : fs::list_dir(root)) {
    const int64_t s = parse_step_dir_name(name);
    if (s >= 0 && is_committed(fs::join(root, name))) steps.push_back(s);
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

std::string commit_step_dir(const std::string& root, const std::string& tmp_dir, const Manifest& manifest,
                            int keep_last) {
  const int stage = -1;
  const std::string manifest_path = fs::join(tmp_dir, kManifestName);
  const std::string manifest_tmp = manifest_path + ".tmp";
  {
    // Written by hand (not write_file_atomic) so each protocol step has its fault point.
    const std::string text = manifest_to_json(manifest);
    FILE* f = std::fopen(manifest_tmp.c_str(), "wb");
    if (!f) throw IoError("cannot create '" + manifest_tmp + "'");
    const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size() && std::fflush(f) == 0 &&
                    ::fsync(::fileno(f)) == 0;
    std::fclose(f);
    if (!ok) throw IoError("cannot write '" + manifest_tmp + "' (disk full?)");
  }
  fault_point("manifest-written", stage);
  fs::rename_path(manifest_tmp, manifest_path);
  fs::fsync_path(tmp_dir);
  fault_point("manifest-renamed", stage);

  const std::string name = step_dir_name(manifest.step);
  const std::string final_dir = fs::join(root, name);
  if (fs::exists(final_dir)) {
    // Swap atomically so step-N is never absent; the old one leaves under the temp name.
    fs::exchange_paths(tmp_dir, final_dir);
    fs::fsync_path(root);
    fs::remove_tree(tmp_dir);
  } else {
    fs::rename_path(tmp_dir, final_dir);
  }
  fs::fsync_path(root);
  fault_point("dir-renamed", stage);

  const std::string latest = fs::join(root, kLatestName);
  const std::string latest_tmp = latest + ".tmp-" + std::to_string(::getpid());
  {
    FILE* f = std::fopen(latest_tmp.c_str(), "wb");
    if (!f) throw IoError("cannot create '" + latest_tmp + "'");
    const std::string text = name + "\n";
    const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size() && std::fflush(f) == 0 &&
                    ::fsync(::fileno(f)) == 0;
    std::fclose(f);
    if (!ok) {
      ::unlink(latest_tmp.c_str());
      throw IoError("cannot write '" + latest_tmp + "' (disk full?)");
    }
  }
  fault_point("latest-written", stage);
  fs::rename_path(latest_tmp, latest);
  fs::fsync_path(root);
  fault_point("latest-renamed", stage);

  // Prune: only committed checkpoints count, and the one just written always stays. Stale
  // temporary directories (a crashed writer's) go too; one writer per root is assumed.
  const std::vector<int64_t> steps = committed_steps(root);
  if (keep_last > 0 && static_cast<int>(steps.size()) > keep_last) {
    for (size_t i = 0; i + static_cast<size_t>(keep_last) < steps.size(); ++i) {
      if (steps[i] != manifest.step) fs::remove_tree(fs::join(root, step_dir_name(steps[i])));
    }
  }
  for (const auto& entry : fs::list_dir(root)) {
    if (entry.rfind("step-", 0) == 0 && entry.find(".tmp-") != std::string::npos) {
      fs::remove_tree(fs::join(root, entry));
    }
    if (entry.rfind(std::string(kLatestName) + ".tmp-", 0) == 0) fs::remove_file(fs::join(root, entry));
  }
  fault_point("pruned", stage);
  return final_dir;
}

std::string resolve_checkpoint_dir(const std::string& path) {
  if (!fs::exists(path)) throw FormatError("'" + path + "' does not exist");
  if (!fs::is_dir(path)) throw FormatError("'" + path + "' is not a committed checkpoint (not a directory)");
  if (is_committed(path)) return path;
  const std::string latest = fs::join(path, kLatestName);
  if (fs::is_file(latest)) {
    const std::string name = trim(fs::read_file(latest, 4096));
    if (parse_step_dir_name(name) < 0) {
      throw FormatError("'" + latest + "' names '" + name + "', which is not a step directory");
    }
    const std::string dir = fs::join(path, name);
    if (!is_committed(dir)) {
      throw FormatError("'" + latest + "' names '" + name + "', which is not a committed checkpoint");
    }
    return dir;
  }
  throw FormatError("'" + path + "' is not a committed checkpoint (no " + std::string(kManifestName) + " and no " +
                    kLatestName + ")");
}

std::string save_checkpoint(const std::string& root, int64_t step, const model::MambaConfig& config,
                            const std::vector<model::StageSpec>& stages, const nlohmann::ordered_json& train,
                            const SaveOptions& options,
                            const std::function<StageData(const model::StageSpec&)>& produce) {
  const std::string tmp = begin_step_dir(root, step);
  try {
    ShardHeader header;
    header.step = step;
    header.config_json = model::config_to_json_string(config);
    header.train_json = train.dump();
    for (const auto& spec : stages) {
      header.stage = spec.stage;
      header.num_stages = spec.num_stages;
      header.layer_begin = spec.layer_begin;
      header.layer_end = spec.layer_end;
      const StageData data = produce(spec);
      write_shard(tmp, header, data.tensors, data.aliases, options.write);
    }
    const Manifest m = build_manifest(tmp, config, stages, step, options.write.compression,
                                      options.has_optimizer, train);
    return commit_step_dir(root, tmp, m, options.keep_last);
  } catch (...) {
    abort_step_dir(tmp);
    throw;
  }
}

// ---- reading ----

CheckpointReader::CheckpointReader(const std::string& path, int threads) {
  h5::Silence quiet;
  dir_ = resolve_checkpoint_dir(path);
  const std::string mpath = fs::join(dir_, kManifestName);
  manifest_ = manifest_from_json(fs::read_file(mpath), "manifest '" + mpath + "'");
  pool_ = std::make_unique<ThreadPool>(threads > 0 ? threads : ThreadPool::default_threads());
}

CheckpointReader::~CheckpointReader() = default;

ShardReader& CheckpointReader::shard(const std::string& file) {
  auto it = shards_.find(file);
  if (it != shards_.end()) return *it->second;
  const StageEntry* entry = nullptr;
  for (const auto& s : manifest_.stages) {
    if (s.file == file) entry = &s;
  }
  if (!entry) throw FormatError("manifest of '" + dir_ + "' lists no shard '" + file + "'");
  const std::string path = fs::join(dir_, file);
  if (!fs::is_file(path)) {
    throw FormatError("checkpoint '" + dir_ + "' is missing shard '" + file + "' (listed in the manifest)");
  }
  const int64_t size = fs::file_size(path);
  if (size != entry->bytes) {
    throw FormatError("shard '" + path + "' is " + std::to_string(size) + " bytes but the manifest records " +
                      std::to_string(entry->bytes) + (size < entry->bytes ? " (truncated)" : ""));
  }
  auto reader = std::make_unique<ShardReader>(path);
  const ShardHeader& h = reader->header();
  if (h.stage != entry->stage || h.num_stages != static_cast<int>(manifest_.stages.size()) ||
      h.layer_begin != entry->layer_begin || h.layer_end != entry->layer_end || h.step != manifest_.step) {
    throw FormatError("shard '" + path + "' header (stage " + std::to_string(h.stage) + ", step " +
                      std::to_string(h.step) + ") disagrees with the manifest");
  }
  // The shard must hold exactly what the manifest says it holds: no FQN stored twice, none missing.
  std::unordered_map<std::string, DatasetInfo> found;
  for (auto& d : reader->scan()) found.emplace(d.path, std::move(d));
  size_t expected = 0;
  for (const auto& t : manifest_.tensors) {
    if (t.file != file || !t.alias_of.empty()) continue;
    for (const auto& [slot, se] : t.slots) {
      ++expected;
      auto f = found.find(se.path);
      if (f == found.end()) {
        throw FormatError("shard '" + path + "' lacks '" + t.fqn + "' (" + slot_name(slot) + ") listed in the manifest");
      }
      if (f->second.shape != se.shape || f->second.dtype != se.dtype || f->second.digest != se.digest) {
        throw FormatError("shard '" + path + "': '" + t.fqn + "' (" + slot_name(slot) +
                          ") metadata disagree with the manifest");
      }
    }
  }
  if (found.size() != expected) {
    for (const auto& [p, d] : found) {
      const TensorEntry* t = manifest_.find(d.fqn);
      if (!t || t->file != file || !t->slots.count(d.slot)) {
        throw FormatError("shard '" + path + "' holds '" + d.fqn + "' (" + slot_name(d.slot) +
                          ") which the manifest places elsewhere or not at all (stored twice?)");
      }
    }
  }
  datasets_[file] = std::move(found);
  return *(shards_[file] = std::move(reader));
}

const std::unordered_map<std::string, DatasetInfo>& CheckpointReader::shard_datasets(const std::string& file) {
  shard(file);
  return datasets_.at(file);
}

void CheckpointReader::read(const std::string& fqn, Slot slot, at::Tensor& dest) {
  std::vector<ReadRequest> one{{fqn, slot, dest}};
  read_many(one);
}

void CheckpointReader::read_many(std::vector<ReadRequest>& requests) {
  h5::Silence quiet;
  struct Pending {
    std::future<void> done;
    uint64_t digest = 0;
    const SlotEntry* entry = nullptr;
    std::string fqn, file;
    Slot slot = Slot::kParam;
  };
  std::deque<Pending> pending;
  auto settle = [&](Pending& p) {
    p.done.get();
    if (p.digest != p.entry->digest) {
      throw IntegrityError("digest mismatch for '" + p.fqn + "' (" + slot_name(p.slot) + ") in " +
                           fs::join(dir_, p.file) + ": recorded " + digest_hex(p.entry->digest) +
                           ", data hashes to " + digest_hex(p.digest));
    }
  };
  struct Done {
    std::deque<Pending>* q;
    ~Done() {
      for (auto& p : *q) {
        if (p.done.valid()) p.done.wait();
      }
    }
  } guard{&pending};
  std::map<std::pair<std::string, Slot>, at::Tensor> loaded;  // stored tensor -> first copy
  for (ReadRequest& r : requests) {
    const TensorEntry& t = manifest_.resolve(r.fqn);
    auto it = t.slots.find(r.slot);
    if (it == t.slots.end()) {
      throw FormatError("checkpoint '" + dir_ + "' has no " + slot_name(r.slot) + " for '" + r.fqn + "'");
    }
    const SlotEntry& se = it->second;
    const auto key = std::make_pair(t.fqn, r.slot);
    auto seen = loaded.find(key);
    if (seen != loaded.end()) {
      if (r.dest.defined()) {
        r.dest.copy_(seen->second);
      } else {
        r.dest = seen->second.clone();
      }
      continue;
    }
    if (!r.dest.defined()) {
      r.dest = at::empty(se.shape, at::TensorOptions().dtype(dtype_from_name(se.dtype)));
    } else if (r.dest.sizes().vec() != se.shape || dtype_name(r.dest.scalar_type()) != se.dtype ||
               !r.dest.is_contiguous()) {
      throw UsageError("cannot load '" + r.fqn + "' (" + slot_name(r.slot) + ") of shape " +
                       std::to_string(se.shape.size()) + "-d " + se.dtype + " into the given tensor");
    }
    ShardReader& reader = shard(t.file);
    reader.read(datasets_.at(t.file).at(se.path), r.dest, pool_.get());
    loaded.emplace(key, r.dest);
    while (pending.size() >= static_cast<size_t>(pool_->size())) {
      settle(pending.front());
      pending.pop_front();
    }
    pending.emplace_back();
    Pending& p = pending.back();
    p.entry = &se;
    p.fqn = r.fqn;
    p.file = t.file;
    p.slot = r.slot;
    const at::Tensor data = r.dest;
    uint64_t* out = &p.digest;
    p.done = pool_->submit([data, out] { *out = tensor_digest(data); });
  }
  while (!pending.empty()) {
    settle(pending.front());
    pending.pop_front();
  }
}

at::Tensor CheckpointReader::read(const std::string& fqn, Slot slot) {
  std::vector<ReadRequest> one{{fqn, slot, at::Tensor()}};
  read_many(one);
  return one.front().dest;
}

}  // namespace pmamba::ckpt
