#include "src/ckpt/reshard.h"

#include <ATen/ATen.h>
#include <limits.h>
#include <stdlib.h>

#include "src/ckpt/checkpoint.h"
#include "src/ckpt/errors.h"
#include "src/ckpt/fs.h"
#include "src/ckpt/verify.h"
#include "src/model/errors.h"
#include "src/model/fqn.h"

namespace pmamba::ckpt {

namespace {

std::string real_path(const std::string& p) {
  char buf[PATH_MAX];
  return ::realpath(p.c_str(), buf) ? std::string(buf) : std::string();
}

bool inside(const std::string& child, const std::string& parent) {
  return !child.empty() && !parent.empty() &&
         (child == parent || (child.size() > parent.size() && child.compare(0, parent.size(), parent) == 0 &&
                              child[parent.size()] == '/'));
}

const Slot kSlots[] = {Slot::kParam, Slot::kExpAvg, Slot::kExpAvgSq, Slot::kStep};

}  // namespace

ReshardResult reshard(const ReshardOptions& o) {
  h5::Silence quiet;
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
  const bool keep = o.compression == "keep";
  const Compression target = keep ? src.compression : Compression::parse(o.compression);
  if (o.out.empty()) throw UsageError("no output directory given");
  const std::string in_root = real_path(fs::parent(in.dir()));
  const std::string out_real = real_path(o.out);
  if (inside(out_real, real_path(in.dir())) || (!out_real.empty() && out_real == in_root) ||
      inside(real_path(in.dir()), out_real)) {
    throw UsageError("the output '" + o.out + "' overlaps the input checkpoint '" + in.dir() +
                     "'; the input is never modified");
  }
  if (fs::exists(o.out)) {
    if (!fs::is_dir(o.out)) throw UsageError("output '" + o.out + "' exists and is not a directory");
    if (!fs::list_dir(o.out).empty() && !o.force) {
      throw UsageError("output '" + o.out + "' already exists and is not empty (use --force to write into it)");
    }
  }

  int64_t total = 0, done = 0;
  for (const auto& t : src.tensors) {
    for (const auto& kv : t.slots) total += kv.second.raw_bytes;
  }
  const std::vector<model::ParamInfo> params = model::list_parameters(config);
  ReshardResult result;
  const bool created_out = !fs::exists(o.out);
  const std::string tmp = begin_step_dir(o.out, src.step);
  try {
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
      ShardWriter writer(tmp, header, w);
      for (const auto& p : params) {
        if (!model::stage_owns(p, spec)) continue;
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
          a.target_file = owner_stage == spec.stage ? "" : shard_file_name(owner_stage, spec.num_stages);
          writer.add_alias(a);
          continue;
        }
        for (Slot slot : kSlots) {
          auto it = entry->slots.find(slot);
          if (it == entry->slots.end()) continue;
          const SlotEntry& se = it->second;
          ShardReader& reader = in.shard(entry->file);
          const DatasetInfo& info = in.shard_datasets(entry->file).at(se.path);
          const bool same_encoding = keep || (target.zstd == src.compression.zstd &&
                                              (!target.zstd || target.level == src.compression.level));
          if (same_encoding && !o.verify) {
            writer.copy(reader, info);
            ++result.copied;
          } else {
            at::Tensor t = in.read(p.fqn, slot);  // decodes and checks the digest
            if (same_encoding) {
              writer.copy(reader, info);
              ++result.copied;
            } else {
              writer.add(TensorToSave{p.fqn, slot, t});
              ++result.reencoded;
            }
          }
          done += se.raw_bytes;
          if (o.progress) o.progress(done, total);
        }
      }
      writer.finish();
    }
    result.manifest = build_manifest(tmp, config, stages, src.step, target, src.has_optimizer, src.train);
    if (o.verify) {  // the output is checked before it is committed
      VerifyReport report;
      verify_contents(tmp, result.manifest, VerifyOptions{false, o.threads}, report);
      if (!report.ok()) throw IntegrityError("the resharded output does not verify: " + report.problems.front());
    }
    result.out_dir = commit_step_dir(o.out, tmp, result.manifest, 0);
  } catch (...) {
    abort_step_dir(tmp);
    if (created_out) {
      try {
        if (fs::list_dir(o.out).empty()) fs::remove_tree(o.out);
      } catch (...) {
      }
    }
    throw;
  }
  return result;
}

}  // namespace pmamba::ckpt
