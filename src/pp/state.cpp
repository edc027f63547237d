#include <c10/core/GradMode.h>
#include "src/pp/state.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>

#include "src/ckpt/errors.h"
#include "src/ckpt/fs.h"
#include "src/ckpt/lock.h"
#include "src/ckpt/resources.h"
#include "src/model/fqn.h"
#include "src/pp/device.h"
#include "src/pp/errors.h"
#include "src/pp/plan.h"

namespace pmamba::pp {

using ckpt::Slot;

namespace {

// How a saved tensor reaches host memory; `key` names it ("<fqn>/<slot>").
using ToHost = std::function<at::Tensor(const std::string& key, const at::Tensor& tensor)>;

ckpt::StageData collect(model::MambaLMImpl& m, const AdamW* optim, const std::vector<model::StageSpec>* stages,
                        int parts, int part, const ToHost& to_host) {
  ckpt::StageData data;
  const model::MambaConfig& c = m.config();
  const model::StageSpec& stage = m.stage();
  const std::map<std::string, int> where = parts > 1 ? ckpt::assign_parts(c, stage, parts) : std::map<std::string, int>{};
  for (const auto& item : m.named_parameters()) {
    const std::string& fqn = item.key();
    if (parts > 1 && where.at(fqn) != part) continue;
    const bool alias = fqn == model::kLmHeadFqn && c.tie_embeddings;
    // An alias keeps only digests, taken from the tensors as they are now.
    const ToHost host = alias ? ToHost([](const std::string&, const at::Tensor& t) { return t.cpu(); }) : to_host;
    const at::Tensor p = host(fqn + "/param", item.value().detach());
    at::Tensor exp_avg, exp_avg_sq;
    int64_t step = 0;
    if (optim) {
      const ParamState& s = optim->state(fqn);
      if (s.exp_avg.defined()) exp_avg = host(fqn + "/exp_avg", s.exp_avg);
      if (s.exp_avg_sq.defined()) exp_avg_sq = host(fqn + "/exp_avg_sq", s.exp_avg_sq);
      step = s.step;
    }
    if (!exp_avg.defined()) exp_avg = at::zeros(p.sizes(), at::kFloat);
    if (!exp_avg_sq.defined()) exp_avg_sq = at::zeros(p.sizes(), at::kFloat);
    const at::Tensor step_t = at::scalar_tensor(step, at::kLong);
    if (alias) {
      ckpt::AliasToSave a;
      a.fqn = fqn;
      a.alias_of = model::kEmbeddingFqn;
      if (parts > 1) {
        const std::string target = ckpt::file_holding(c, *stages, 0, parts, a.alias_of);
        a.target_file = target == ckpt::shard_file_name(stage.stage, stage.num_stages, part, parts) ? "" : target;
      } else {
        a.target_file = stage.is_first() ? "" : ckpt::shard_file_name(0, stage.num_stages);
      }
      a.digests[Slot::kParam] = ckpt::tensor_digest(p);
      a.digests[Slot::kExpAvg] = ckpt::tensor_digest(exp_avg);
      a.digests[Slot::kExpAvgSq] = ckpt::tensor_digest(exp_avg_sq);
      a.digests[Slot::kStep] = ckpt::tensor_digest(step_t);
      data.aliases.push_back(std::move(a));
      continue;
    }
    data.tensors.push_back({fqn, Slot::kParam, p});
    data.tensors.push_back({fqn, Slot::kExpAvg, exp_avg});
    data.tensors.push_back({fqn, Slot::kExpAvgSq, exp_avg_sq});
    data.tensors.push_back({fqn, Slot::kStep, step_t});
  }
  return data;
}

at::Tensor page_aligned_empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  constexpr size_t kPage = 4096;
  int64_t numel = 1;
  for (const int64_t d : sizes) numel *= d;
  const size_t bytes = std::max<size_t>(static_cast<size_t>(numel) * c10::elementSize(dtype), 1);
  void* p = nullptr;
  if (::posix_memalign(&p, kPage, (bytes + kPage - 1) / kPage * kPage) != 0) {
    throw ckpt::ResourceError("cannot allocate " + std::to_string(bytes) + " bytes for the checkpoint snapshot");
  }
  return at::from_blob(p, sizes, [](void* q) { std::free(q); }, at::TensorOptions().dtype(dtype));
}

}  // namespace

ckpt::StageData collect_stage(model::MambaLMImpl& m, const AdamW* optim, const std::vector<model::StageSpec>* stages,
                              int parts, int part) {
  // Shards are written from host memory; for a model on the CPU these are the tensors themselves.
  return collect(m, optim, stages, parts, part, [](const std::string&, const at::Tensor& t) { return t.cpu(); });
}

const ckpt::StageData& StageSnapshot::take(model::MambaLMImpl& m, const AdamW* optim,
                                           const std::vector<model::StageSpec>* stages, int parts, int part) {
  data_ = collect(m, optim, stages, parts, part, [this](const std::string& key, const at::Tensor& t) {
    at::Tensor& b = buffers_[key];
    if (!b.defined() || b.sizes() != t.sizes() || b.scalar_type() != t.scalar_type()) {
      // Pinned host memory makes the copy from a GPU a plain DMA. On the CPU a page-aligned
      // buffer lets an uncompressed shard write it with O_DIRECT from where it lies, without
      // the copy through the writer's bounce buffer (140 MB of memcpy per save at the small
      // preset, on the cores training uses).
      b = t.is_cuda() ? at::empty(t.sizes(), at::TensorOptions().dtype(t.scalar_type()).pinned_memory(true))
                      : page_aligned_empty(t.sizes(), t.scalar_type());
    }
    // Synchronous: the optimizer may change `t` as soon as this returns. On the CPU a plain
    // memcpy, since take() may run on a background thread, where an intra-op parallel copy
    // would start a second OpenMP team beside training's.
    if (!t.is_cuda() && t.is_contiguous() && t.scalar_type() == b.scalar_type()) {
      std::memcpy(b.data_ptr(), t.data_ptr(), t.nbytes());
    } else {
      b.copy_(t);
    }
    return b;
  });
  return data_;
}

int64_t StageSnapshot::bytes() const {
  int64_t n = 0;
  for (const auto& [key, b] : buffers_) n += static_cast<int64_t>(b.nbytes());
  return n;
}

void load_stage(ckpt::CheckpointReader& reader, model::MambaLMImpl& m, AdamW* optim) {
  const ckpt::Manifest& man = reader.manifest();
  if (man.config != m.config()) {
    throw ckpt::FormatError("checkpoint '" + reader.dir() + "' holds a model with config " +
                            model::config_to_json_string(man.config) + ", not " +
                            model::config_to_json_string(m.config()));
  }
  if (optim && !man.has_optimizer) {
    throw ckpt::FormatError("checkpoint '" + reader.dir() + "' holds weights only (no optimizer state to resume "
                            "from); start a new run from its weights with --init-from " + reader.dir());
  }
  c10::NoGradGuard no_grad;
  std::vector<ckpt::ReadRequest> requests;
  std::vector<at::Tensor> steps;
  for (auto& item : m.named_parameters()) {
    at::Tensor p = item.value().detach();
    // Read straight into a contiguous CPU parameter of the stored dtype; anything else (a CUDA
    // parameter, or weights stored in another precision, e.g. a bfloat16 import) gets a host
    // buffer and a copy that converts.
    const bool direct = p.is_cpu() && p.is_contiguous() &&
                        man.resolve(item.key()).slots.at(Slot::kParam).dtype == ckpt::dtype_name(p.scalar_type());
    requests.push_back({item.key(), Slot::kParam, direct ? p : at::Tensor()});
    if (optim && !optim->is_follower(item.key()) && optim->owns(item.key())) {
      requests.push_back({item.key(), Slot::kExpAvg, at::Tensor()});
      requests.push_back({item.key(), Slot::kExpAvgSq, at::Tensor()});
      requests.push_back({item.key(), Slot::kStep, at::Tensor()});
    }
  }
  reader.read_many(requests);
  size_t i = 0;
  for (auto& item : m.named_parameters()) {
    const ckpt::ReadRequest& r = requests[i++];
    if (r.dest.data_ptr() != item.value().data_ptr()) item.value().copy_(r.dest);
    if (optim && !optim->is_follower(item.key()) && optim->owns(item.key())) {
      ParamState& s = optim->state(item.key());
      s.exp_avg = requests[i++].dest.to(item.value().device());
      s.exp_avg_sq = requests[i++].dest.to(item.value().device());
      s.step = requests[i++].dest.item<int64_t>();
    }
  }
}

nlohmann::ordered_json initial_train_state(uint64_t seed, int64_t step) {
  nlohmann::ordered_json j;
  j["step"] = step;
  j["seed"] = seed;
  j["samples_consumed"] = 0;
  j["tokens_consumed"] = 0;
  return j;
}

std::string init_checkpoint(const InitOptions& o) {
  if (o.out.empty()) throw UsageError("init needs an output directory");
  if (o.preset.empty() == o.config_path.empty()) throw UsageError("give exactly one of --preset or --config");
  ckpt::check_threads(o.threads);
  const model::MambaConfig config = o.preset.empty() ? load_config_file(o.config_path) : model::preset(o.preset);
  const auto stages = model::make_stages(config.n_layer, o.pp, o.partition);
  ckpt::SaveOptions save;
  save.write.compression = ckpt::Compression::parse(o.compression);
  save.write.threads = o.threads;
  save.run_id = ckpt::new_run_id();  // a seed checkpoint starts a run of its own
  int64_t bytes = 0;
  for (int64_t b : stage_parameter_bytes(config, stages)) bytes = std::max(bytes, b);
  ckpt::require_memory(bytes, "initialising the largest stage of this model");
  ckpt::check_output_location(o.out, {});
  const bool created = !ckpt::fs::exists(o.out);
  // Lock first, then look: nothing can slip into the root between the check and the write.
  ckpt::RootLock lock = ckpt::RootLock::acquire(o.out, "pmamba-ckpt init");
  try {
    if (!ckpt::root_is_empty(o.out)) {
      const std::string run = ckpt::root_run_id(o.out);
      throw UsageError("'" + o.out + "' is not empty" + (run.empty() ? "" : " (it holds checkpoints of run " + run + ")") +
                       "; init writes a new run's step 0 only into an empty or new directory");
    }
    return ckpt::save_checkpoint(o.out, 0, config, stages, initial_train_state(o.seed), save,
                                 [&](const model::StageSpec& spec) {
                                   model::MambaLM stage(config, spec);
                                   stage->init_parameters(o.seed);
                                   return collect_stage(*stage, nullptr);
                                 });
  } catch (...) {
    if (created && ckpt::root_is_empty(o.out)) {
      try {
        ckpt::fs::remove_tree(o.out);
      } catch (...) {
      }
    }
    throw;
  }
}

}  // namespace pmamba::pp
