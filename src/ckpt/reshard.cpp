#include "src/ckpt/reshard.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <map>

#include "src/ckpt/checkpoint.h"
#include "src/ckpt/errors.h"
#include "src/ckpt/fs.h"
#include "src/ckpt/lock.h"
#include "src/ckpt/resources.h"
#include "src/ckpt/verify.h"
#include "src/model/errors.h"
#include "src/model/fqn.h"

namespace pmamba::ckpt {

namespace {

const Slot kSlots[] = {Slot::kParam, Slot::kExpAvg, Slot::kExpAvgSq, Slot::kStep};

}  // namespace

ReshardResult reshard(const ReshardOptions& o) {
  h5::Silence quiet;
  if (o.out.empty()) throw UsageError("no output directory given");
  check_threads(o.threads);
  CheckpointReader in(o.in, o.threads);
  const Manifest& src = in.manifest();
  const model::MambaConfig& config = src.config;

  // Everything that can be refused is refused before a byte is written.
  std::vector<model::StageSpec> stages;
  try {
    stages = model::make_stages(config.n_layer, o.pp, o.partition);
  } catch (const model::ConfigError& e) {
    throw UsageError(std::string("cannot reshard to that layout: ") + e.what());
  }
  if (o.files_per_stage < 1 || o.files_per_stage > kMaxFilesPerStage) {
    throw UsageError("--files-per-stage must be in [1, " + std::to_string(kMaxFilesPerStage) + "], found " +
                     std::to_string(o.files_per_stage));
  }
  const int parts = o.files_per_stage;
  const bool keep = o.compression == "keep";
  const Compression target = keep ? src.compression : Compression::parse(o.compression);
  check_output_location(o.out, {o.in});
  if (fs::exists(o.out) && !fs::is_dir(o.out)) throw UsageError("output '" + o.out + "' exists and is not a directory");
  const bool created_out = !fs::exists(o.out);
  // A version-1 input has no run id: its resharded copy starts one.
  const std::string run_id = src.run_id.empty() ? new_run_id() : src.run_id;
  RootLock lock = RootLock::acquire(o.out, "pmamba-reshard");
  auto remove_created = [&] {
    if (!created_out) return;
    try {
      if (root_is_empty(o.out)) fs::remove_tree(o.out);
    } catch (...) {
    }
  };
  try {
    if (!root_is_empty(o.out)) {
      if (!o.force) {
        throw UsageError("output '" + o.out + "' already exists and is not empty (use --force to write into it)");
      }
      const std::string there = root_run_id(o.out);
      if (!there.empty() && there != run_id) {
        throw UsageError("output '" + o.out + "' holds checkpoints of another run (" + there + ", the input is run " +
                         run_id + "); --force writes only into a root of the same run");
      }
    }
  } catch (...) {
    remove_created();
    throw;
  }

  int64_t total = 0, done = 0, largest = 0;
  for (const auto& t : src.tensors) {
    for (const auto& kv : t.slots) {
      total += kv.second.raw_bytes;
      largest = std::max(largest, kv.second.raw_bytes);
    }
  }
  ScratchBuffer scratch;
  const std::vector<model::ParamInfo> params = model::list_parameters(config);
  ReshardResult result;
  std::string tmp;
  try {
    tmp = begin_step_dir(o.out, src.step);
    ShardHeader header;
    header.step = src.step;
    header.config_json = model::config_to_json_string(config);
    header.train_json = src.train.dump();
    WriteOptions w;
    w.compression = target;
    w.threads = o.threads;
    for (const auto& spec : stages) {
      header.stage = spec.stage;
      header.num_stages = spec.num_stages;
      header.layer_begin = spec.layer_begin;
      header.layer_end = spec.layer_end;
      header.parts = parts;
      const std::map<std::string, int> where = assign_parts(config, spec, parts);
      for (int part = 0; part < parts; ++part) {
        header.part = part;
        ShardWriter writer(tmp, header, w);
        for (const auto& p : params) {
          if (!model::stage_owns(p, spec) || where.at(p.fqn) != part) continue;
          const TensorEntry* entry = src.find(p.fqn);
          if (!entry->alias_of.empty()) {
            AliasToSave a;
            a.fqn = p.fqn;
            a.alias_of = entry->alias_of;
            a.digests = entry->alias_digests;
            const model::ParamInfo* owner = nullptr;
            for (const auto& q : params) {
              if (q.fqn == entry->alias_of) owner = &q;
            }
            const int owner_stage = owner ? model::owner_stage(*owner, stages) : 0;
            const std::string target = file_holding(config, stages, owner_stage, parts, entry->alias_of);
            a.target_file = target == shard_file_name(spec.stage, spec.num_stages, part, parts) ? "" : target;
            writer.add_alias(a);
            continue;
          }
          for (Slot slot : kSlots) {
            auto it = entry->slots.find(slot);
            if (it == entry->slots.end()) continue;
            const StoredDataset& se = it->second;
            ShardReader& reader = in.shard(entry->file);
            const StoredDataset& info = in.shard_datasets(entry->file).at(se.path);
            const bool same_encoding = keep || (target.zstd == src.compression.zstd &&
                                                (!target.zstd || target.level == src.compression.level));
            if (same_encoding && !o.verify) {
              writer.copy(reader, info);
              ++result.copied;
            } else if (same_encoding) {
              // Decoded into one reused buffer (the copy does not need the tensor): peak memory
              // stays one tensor, and fresh memory is touched once.
              at::Tensor t = scratch.view(se.shape, dtype_from_name(se.dtype), largest, "verifying '" + p.fqn + "'");
              in.read(p.fqn, slot, t);  // decodes and checks the digest
              writer.copy(reader, info);
              ++result.copied;
            } else {
              at::Tensor t = in.read(p.fqn, slot);  // decodes and checks the digest
              writer.add(TensorToSave{p.fqn, slot, t});
              ++result.reencoded;
            }
            done += se.raw_bytes;
            if (o.progress) o.progress(done, total);
          }
        }
        writer.finish();
      }
    }
    scratch.release();  // before verify_contents takes its own
    result.manifest = build_manifest(tmp, run_id, config, stages, src.step, target, src.has_optimizer, src.train, parts);
    if (o.verify) {  // the output is checked before it is committed
      VerifyReport report;
      verify_contents(tmp, result.manifest, VerifyOptions{false, o.threads}, report);
      if (!report.ok()) throw IntegrityError("the resharded output does not verify: " + report.problems.front());
    }
    const CommitResult c = commit_step_dir(o.out, tmp, result.manifest, CommitOptions{});
    result.out_dir = c.dir;
    result.note = c.latest_error;
  } catch (...) {
    if (!tmp.empty()) abort_step_dir(tmp);
    remove_created();
    throw;
  }
  return result;
}

}  // namespace pmamba::ckpt
