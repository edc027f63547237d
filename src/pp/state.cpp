#include <c10/core/GradMode.h>
#include "src/pp/state.h"

#include <ATen/ATen.h>

#include "src/ckpt/errors.h"
#include "src/model/fqn.h"
#include "src/pp/errors.h"

namespace pmamba::pp {

using ckpt::Slot;

ckpt::StageData collect_stage(model::MambaLMImpl& m, const AdamW* optim) {
  ckpt::StageData data;
  const model::MambaConfig& c = m.config();
  const model::StageSpec& stage = m.stage();
  for (const auto& item : m.named_parameters()) {
    const std::string& fqn = item.key();
    // Shards are written from host memory; for a model on the CPU these are the tensors themselves.
    const at::Tensor p = item.value().detach().cpu();
    at::Tensor exp_avg, exp_avg_sq;
    int64_t step = 0;
    if (optim) {
      const ParamState& s = optim->state(fqn);
      if (s.exp_avg.defined()) exp_avg = s.exp_avg.cpu();
      if (s.exp_avg_sq.defined()) exp_avg_sq = s.exp_avg_sq.cpu();
      step = s.step;
    }
    if (!exp_avg.defined()) exp_avg = at::zeros(p.sizes(), at::kFloat);
    if (!exp_avg_sq.defined()) exp_avg_sq = at::zeros(p.sizes(), at::kFloat);
    const at::Tensor step_t = at::scalar_tensor(step, at::kLong);
    if (fqn == model::kLmHeadFqn && c.tie_embeddings) {
      ckpt::AliasToSave a;
      a.fqn = fqn;
      a.alias_of = model::kEmbeddingFqn;
      a.target_file = stage.is_first() ? "" : ckpt::shard_file_name(0, stage.num_stages);
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

void load_stage(ckpt::CheckpointReader& reader, model::MambaLMImpl& m, AdamW* optim) {
  const ckpt::Manifest& man = reader.manifest();
  if (man.config != m.config()) {
    throw ckpt::FormatError("checkpoint '" + reader.dir() + "' holds a model with config " +
                            model::config_to_json_string(man.config) + ", not " +
                            model::config_to_json_string(m.config()));
  }
  if (optim && !man.has_optimizer) {
    throw ckpt::FormatError("checkpoint '" + reader.dir() + "' has no optimizer state to resume from");
  }
  c10::NoGradGuard no_grad;
  std::vector<ckpt::ReadRequest> requests;
  std::vector<at::Tensor> steps;
  for (auto& item : m.named_parameters()) {
    at::Tensor p = item.value().detach();
    // Read straight into a contiguous CPU parameter; anything else gets a host buffer and a copy.
    requests.push_back({item.key(), Slot::kParam, p.is_cpu() && p.is_contiguous() ? p : at::Tensor()});
    if (optim && !optim->is_follower(item.key())) {
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
    if (optim && !optim->is_follower(item.key())) {
      ParamState& s = optim->state(item.key());
      s.exp_avg = requests[i++].dest.to(item.value().device());
      s.exp_avg_sq = requests[i++].dest.to(item.value().device());
      s.step = requests[i++].dest.item<int64_t>();
    }
  }
}

nlohmann::ordered_json initial_train_state(uint64_t seed) {
  nlohmann::ordered_json j;
  j["step"] = 0;
  j["seed"] = seed;
  j["samples_consumed"] = 0;
  j["tokens_consumed"] = 0;
  return j;
}

std::string init_checkpoint(const InitOptions& o) {
  if (o.out.empty()) throw UsageError("init needs an output directory");
  if (o.preset.empty() == o.config_path.empty()) throw UsageError("give exactly one of --preset or --config");
  const model::MambaConfig config = o.preset.empty() ? model::config_from_file(o.config_path) : model::preset(o.preset);
  const auto stages = model::make_stages(config.n_layer, o.pp, o.partition);
  ckpt::SaveOptions save;
  save.write.compression = ckpt::Compression::parse(o.compression);
  save.write.threads = o.threads;
  return ckpt::save_checkpoint(o.out, 0, config, stages, initial_train_state(o.seed), save,
                               [&](const model::StageSpec& spec) {
                                 model::MambaLM stage(config, spec);
                                 stage->init_parameters(o.seed);
                                 return collect_stage(*stage, nullptr);
                               });
}

}  // namespace pmamba::pp
