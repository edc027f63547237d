#include "src/ckpt/checkpoint.h"

#include <ATen/ATen.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <future>

#include "src/ckpt/errors.h"
#include "src/ckpt/fault.h"
#include "src/ckpt/fs.h"
#include "src/ckpt/lock.h"
#include "src/ckpt/resources.h"
#include "src/ckpt/thread_pool.h"

namespace pmamba::ckpt {

namespace {

bool is_committed(const std::string& dir) { return fs::is_file(fs::join(dir, kManifestName)); }

// The run id recorded in a step directory's manifest ("" when there is none or it cannot be
// read: such a directory never counts as another run's, nor as this one's).
std::string run_id_of(const std::string& dir) {
  try {
    const nlohmann::ordered_json j = nlohmann::ordered_json::parse(fs::read_file(fs::join(dir, kManifestName)));
    if (j.is_object() && j.contains("run_id") && j.at("run_id").is_string()) return j.at("run_id").get<std::string>();
  } catch (const std::exception&) {
  }
  return "";
}

void require_lock(const std::string& root, const char* what) {
  if (!RootLock::held_here(root)) {
    throw UsageError(std::string("internal: ") + what + " in '" + root + "' without holding its lock");
  }
}

// Writes `text` to `path` and fsyncs it; removes it and throws IoError on failure.
void write_synced(const std::string& path, const std::string& text) {
  FILE* f = std::fopen(path.c_str(), "wbe");
  if (!f) throw IoError("cannot create '" + path + "': " + std::strerror(errno));
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size() && std::fflush(f) == 0 &&
                  ::fsync(::fileno(f)) == 0;
  const int err = errno;
  std::fclose(f);
  if (!ok) {
    ::unlink(path.c_str());
    throw IoError("cannot write '" + path + "': " + std::strerror(err));
  }
}

}  // namespace

std::string begin_step_dir(const std::string& root, int64_t step) {
  require_lock(root, "writing a checkpoint");
  static std::atomic<int> counter{0};
  const auto nonce = std::chrono::steady_clock::now().time_since_epoch().count() % 1000000;
  const std::string tmp = fs::join(root, step_dir_name(step) + ".tmp-" + std::to_string(::getpid()) + "-" +
                                             std::to_string(nonce) + "-" + std::to_string(counter++));
  if (fault_injected("step-dir")) throw IoError("cannot create directory '" + tmp + "': injected fault (PMAMBA_FAULT)");
  fs::make_dirs(tmp);
  fault_point("step-dir-made");
  return tmp;
}

void abort_step_dir(const std::string& tmp_dir) noexcept {
  try {
    fs::remove_tree(tmp_dir);
  } catch (...) {
  }
}

std::vector<CommittedStep> committed_checkpoints(const std::string& root) {
  std::vector<CommittedStep> out;
  if (!fs::is_dir(root)) return out;
  for (const auto& name : fs::list_dir(root)) {
    const int64_t s = parse_step_dir_name(name);
    const std::string dir = fs::join(root, name);
    if (s >= 0 && is_committed(dir)) out.push_back(CommittedStep{s, dir, run_id_of(dir)});
  }
  std::sort(out.begin(), out.end(), [](const CommittedStep& a, const CommittedStep& b) { return a.step < b.step; });
  return out;
}

std::vector<int64_t> committed_steps(const std::string& root) {
  std::vector<int64_t> steps;
  for (const auto& c : committed_checkpoints(root)) steps.push_back(c.step);
  return steps;
}

CommitResult commit_step_dir(const std::string& root, const std::string& tmp_dir, const Manifest& manifest,
                             const CommitOptions& options) {
  require_lock(root, "committing a checkpoint");
  const int stage = -1;
  const std::string manifest_path = fs::join(tmp_dir, kManifestName);
  const std::string manifest_tmp = manifest_path + ".tmp";
  // Written by hand (not write_file_atomic) so each protocol step has its fault point.
  write_synced(manifest_tmp, manifest_to_json(manifest));
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

  // Committed from here on: what fails below is reported, not thrown.
  CommitResult result;
  result.dir = final_dir;
  const std::string latest = fs::join(root, kLatestName);
  const std::string latest_tmp = latest + ".tmp-" + std::to_string(::getpid());
  try {
    if (fault_injected("latest-write")) throw IoError("cannot write '" + latest_tmp + "': injected fault (PMAMBA_FAULT)");
    write_synced(latest_tmp, name + "\n");
    fault_point("latest-written", stage);
    fs::rename_path(latest_tmp, latest);
    fs::fsync_path(root);
    fault_point("latest-renamed", stage);
  } catch (const Error& e) {
    ::unlink(latest_tmp.c_str());
    result.latest_error = e.what();
  }

  // Prune. Only committed checkpoints count, only this run's (and legacy ones without a run
  // id) are pruned by keep_last, and the one just written always stays. Other runs' go only
  // with remove_other_runs, after this commit. Stale temporary directories (a crashed
  // writer's) go too: the lock guarantees no other writer is using them.
  try {
    std::vector<CommittedStep> mine;
    for (const auto& c : committed_checkpoints(root)) {
      if (c.run_id == manifest.run_id) {
        mine.push_back(c);
      } else if (options.remove_other_runs) {
        fs::remove_tree(c.dir);  // the run this one replaces (version-1 checkpoints included)
      } else if (c.run_id.empty()) {
        mine.push_back(c);  // a version-1 checkpoint this run continues
      }  // another run's: never touched
    }
    if (options.keep_last > 0 && static_cast<int>(mine.size()) > options.keep_last) {
      for (size_t i = 0; i + static_cast<size_t>(options.keep_last) < mine.size(); ++i) {
        if (mine[i].step != manifest.step) fs::remove_tree(mine[i].dir);
      }
    }
    for (const auto& entry : fs::list_dir(root)) {
      if (entry.rfind("step-", 0) == 0 && entry.find(".tmp-") != std::string::npos) {
        fs::remove_tree(fs::join(root, entry));
      }
      if (entry.rfind(std::string(kLatestName) + ".tmp-", 0) == 0) fs::remove_file(fs::join(root, entry));
    }
  } catch (const Error& e) {
    if (result.latest_error.empty()) result.latest_error = std::string("pruning failed: ") + e.what();
  }
  fault_point("pruned", stage);
  return result;
}

std::string resolve_checkpoint_dir(const std::string& path, std::string* note) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ELOOP) throw FormatError("'" + path + "' is a symbolic link loop");
    if (errno == ENOENT && fs::exists(path)) throw FormatError("'" + path + "' is a symbolic link to nothing");
    throw FormatError("'" + path + "' does not exist");
  }
  if (!S_ISDIR(st.st_mode)) throw FormatError("'" + path + "' is not a committed checkpoint (not a directory)");
  if (is_committed(path)) return path;
  const std::string latest = fs::join(path, kLatestName);
  const std::vector<CommittedStep> committed = committed_checkpoints(path);
  std::string named;  // what `latest` names, when it names a committed step directory
  if (fs::exists(latest)) {
    std::string text;
    try {
      text = fs::read_file(latest, 4096);
    } catch (const Error& e) {
      throw FormatError("cannot use '" + latest + "': " + e.what());
    }
    std::string name = text;
    while (!name.empty() && (name.back() == '\n' || name.back() == '\r' || name.back() == ' ')) name.pop_back();
    if (parse_step_dir_name(name) < 0 || name.find('/') != std::string::npos) {
      throw FormatError("'" + latest + "' holds '" + fs::printable(text) + "' (" + std::to_string(text.size()) +
                        " bytes), which is not a step directory name like step-00000100");
    }
    const std::string dir = fs::join(path, name);
    if (is_committed(dir)) {
      named = dir;
    } else if (committed.empty()) {
      throw FormatError("'" + latest + "' names '" + name + "', which is not a committed checkpoint, and '" + path +
                        "' holds none");
    }
  }
  if (committed.empty()) {
    throw FormatError("'" + path + "' is not a committed checkpoint (no " + std::string(kManifestName) +
                      ", no committed step directory and no " + kLatestName + ")");
  }
  // The newest committed checkpoint of the run `latest` names, or of the root's newest run.
  const std::string run = named.empty() ? committed.back().run_id : run_id_of(named);
  int64_t named_step = named.empty() ? -1 : parse_step_dir_name(fs::basename(named));
  const CommittedStep* best = nullptr;
  for (const auto& c : committed) {
    if (c.run_id == run && c.step >= named_step) best = &c;
  }
  if (!best) return named;
  if (note && best->dir != named) {
    *note = named.empty() ? "'" + latest + "' is missing: using the newest committed checkpoint " + best->dir
                          : "'" + latest + "' names " + fs::basename(named) + " but " + fs::basename(best->dir) +
                                " of the same run is committed and newer (a writer stopped before updating latest)";
  }
  return best->dir;
}

std::string root_run_id(const std::string& root) {
  try {
    return run_id_of(resolve_checkpoint_dir(root));
  } catch (const FormatError&) {
    return "";
  }
}

namespace {

bool is_step_dir(const std::string& dir) {
  return parse_step_dir_name(fs::basename(dir)) >= 0 || is_committed(dir);
}

// A directory that holds checkpoints of its own: committed step directories or a lock.
bool is_checkpoint_root(const std::string& dir) {
  if (!fs::is_dir(dir)) return false;
  if (fs::exists(fs::join(dir, kLockName))) return true;
  try {
    for (const auto& name : fs::list_dir(dir)) {
      if (parse_step_dir_name(name) >= 0 && is_committed(fs::join(dir, name))) return true;
    }
  } catch (const Error&) {
  }
  return false;
}

}  // namespace

void check_output_location(const std::string& out, const std::vector<std::string>& inputs, const std::string& may_equal) {
  const std::string abs = fs::absolute_path(out);
  if (is_step_dir(abs)) {
    throw UsageError("the output '" + out + "' is a checkpoint's step directory; name a checkpoint root instead");
  }
  for (std::string up = fs::parent(abs); ; up = fs::parent(up)) {
    if (is_step_dir(up) && up != "/") {
      throw UsageError("the output '" + out + "' lies inside the step directory '" + up + "'");
    }
    if (is_checkpoint_root(up)) {
      throw UsageError("the output '" + out + "' lies inside the checkpoint root '" + up + "'; checkpoints are not nested");
    }
    if (up == "/") break;
  }
  const std::string allowed = may_equal.empty() ? "" : fs::absolute_path(may_equal);
  for (const auto& in : inputs) {
    std::vector<std::string> parts{fs::absolute_path(in)};
    try {
      const std::string dir = fs::absolute_path(resolve_checkpoint_dir(in));
      parts.push_back(dir);
      if (parse_step_dir_name(fs::basename(dir)) >= 0) parts.push_back(fs::parent(dir));
    } catch (const FormatError&) {
    }
    // A resumed run writing into the root it resumed from is the one allowed overlap.
    if (!allowed.empty() && abs == allowed && std::find(parts.begin(), parts.end(), allowed) != parts.end()) continue;
    for (const auto& p : parts) {
      if (fs::within(abs, p)) {
        throw UsageError("the output '" + out + "' is " + (abs == p ? "" : "inside ") + "the input checkpoint '" + p +
                         "'; write somewhere else (the input is never modified)");
      }
      if (fs::within(p, abs)) {
        throw UsageError("the output '" + out + "' contains the input checkpoint '" + p + "'; write somewhere else");
      }
    }
  }
}

std::string save_checkpoint(const std::string& root, int64_t step, const model::MambaConfig& config,
                            const std::vector<model::StageSpec>& stages, const nlohmann::ordered_json& train,
                            const SaveOptions& options,
                            const std::function<StageData(const model::StageSpec&)>& produce) {
  using clock = std::chrono::steady_clock;
  SaveProfile* profile = options.profile;
  auto since = [](clock::time_point t0) { return std::chrono::duration<double>(clock::now() - t0).count(); };
  RootLock lock = RootLock::acquire(root, "pmamba (save_checkpoint)");
  // Without a run id the checkpoint continues the run the root holds, or starts one.
  std::string run_id = options.run_id.empty() ? root_run_id(root) : options.run_id;
  if (run_id.empty()) run_id = new_run_id();
  const std::string tmp = begin_step_dir(root, step);
  try {
    ShardHeader header;
    header.step = step;
    header.config_json = model::config_to_json_string(config);
    header.train_json = train.dump();
    WriteOptions write = options.write;
    if (profile) write.profile = profile;
    // This process writes every shard, so the manifest comes from the writers' records of what
    // they wrote instead of a rescan of the files (each scan reopens every dataset).
    std::vector<WrittenShard> written(stages.size());
    for (size_t i = 0; i < stages.size(); ++i) {
      const model::StageSpec& spec = stages[i];
      header.stage = spec.stage;
      header.num_stages = spec.num_stages;
      header.layer_begin = spec.layer_begin;
      header.layer_end = spec.layer_end;
      clock::time_point t0 = clock::now();
      const StageData data = produce(spec);
      if (profile) profile->produce_s += since(t0);
      write_shard(tmp, header, data.tensors, data.aliases, write, &written[i]);
    }
    clock::time_point t0 = clock::now();
    const Manifest m = build_manifest(tmp, run_id, config, stages, step, options.write.compression,
                                      options.has_optimizer, train, written);
    if (profile) profile->manifest_s += since(t0);
    t0 = clock::now();
    std::string dir = commit_step_dir(root, tmp, m, CommitOptions{options.keep_last, false}).dir;
    if (profile) profile->commit_s += since(t0);
    return dir;
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
  // Every shard is checked now, before anything is allocated or loaded: a checkpoint either
  // passes what verify checks (digests aside, which are checked as tensors are read) or is refused.
  Problems problems(Problems::Mode::kThrow);
  for (const auto& s : manifest_.stages) {
    for (const auto& f : s.files) check_shard(manifest_, s, f, dir_, problems, shards_[f.file]);
  }
  check_ties(manifest_, problems);
  pool_ = std::make_unique<ThreadPool>(threads > 0 ? threads : ThreadPool::default_threads());
}

CheckpointReader::~CheckpointReader() = default;

ShardReader& CheckpointReader::shard(const std::string& file) {
  auto it = shards_.find(file);
  if (it == shards_.end() || !it->second.reader) {
    throw FormatError("manifest of '" + dir_ + "' lists no shard '" + file + "'");
  }
  return *it->second.reader;
}

const std::unordered_map<std::string, StoredDataset>& CheckpointReader::shard_datasets(const std::string& file) {
  shard(file);
  return shards_.at(file).datasets;
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
    const StoredDataset* entry = nullptr;
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
    const StoredDataset& se = it->second;
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
      r.dest = allocate(se.shape, dtype_from_name(se.dtype), "loading '" + r.fqn + "' (" + slot_name(r.slot) + ")");
    } else if (r.dest.sizes().vec() != se.shape || dtype_name(r.dest.scalar_type()) != se.dtype ||
               !r.dest.is_contiguous()) {
      throw UsageError("cannot load '" + r.fqn + "' (" + slot_name(r.slot) + ") of shape " +
                       std::to_string(se.shape.size()) + "-d " + se.dtype + " into the given tensor");
    }
    ShardReader& reader = shard(t.file);
    reader.read(shard_datasets(t.file).at(se.path), r.dest, pool_.get());
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
