#include "src/pp/settings.h"

#include <type_traits>

#include "src/pp/errors.h"

namespace pmamba::pp {

using ojson = nlohmann::ordered_json;

namespace {

std::string show(const std::string& v) { return "'" + v + "'"; }
std::string show(double v) { return format_real(v); }
std::string show(bool v) { return v ? "true" : "false"; }
template <typename T, typename = std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>>>
std::string show(T v) {
  return std::to_string(v);
}

template <typename F>
RunSetting keep(const char* option, const char* section, const char* key, F f) {
  return {option, section, key, RunSetting::kKeep, [f](TrainOptions& o) -> RunSetting::Ref { return &f(o); }};
}
template <typename F>
RunSetting prefer(const char* option, const char* key, F f) {
  return {option, "batch", key, RunSetting::kPrefer, [f](TrainOptions& o) -> RunSetting::Ref { return &f(o); }};
}
template <typename F>
RunSetting runtime(const char* option, F f) {
  return {option, "", "", RunSetting::kRuntime, [f](TrainOptions& o) -> RunSetting::Ref { return &f(o); }};
}

const ojson& section_of(const ojson& t, const char* section) {
  static const ojson none;
  if (*section == '\0') return t;
  return t.is_object() && t.contains(section) ? t.at(section) : none;
}

}  // namespace

const std::vector<RunSetting>& run_settings() {
  // The data source itself (and its content) is recorded by data_to_json and restored by
  // plan.cpp, which knows when a moved file is the same data; its sizes are here.
  static const std::vector<RunSetting> table = {
      keep("seed", "", "seed", [](TrainOptions& o) -> auto& { return o.seed; }),
      keep("init-from", "", "init_from", [](TrainOptions& o) -> auto& { return o.init_from; }),
      keep("lr", "lr_schedule", "lr", [](TrainOptions& o) -> auto& { return o.lr; }),
      keep("min-lr", "lr_schedule", "min_lr", [](TrainOptions& o) -> auto& { return o.min_lr; }),
      keep("warmup", "lr_schedule", "warmup", [](TrainOptions& o) -> auto& { return o.warmup; }),
      keep("steps", "lr_schedule", "steps", [](TrainOptions& o) -> auto& { return o.steps; }),
      keep("beta1", "optimizer", "beta1", [](TrainOptions& o) -> auto& { return o.adamw.beta1; }),
      keep("beta2", "optimizer", "beta2", [](TrainOptions& o) -> auto& { return o.adamw.beta2; }),
      keep("eps", "optimizer", "eps", [](TrainOptions& o) -> auto& { return o.adamw.eps; }),
      keep("weight-decay", "optimizer", "weight_decay", [](TrainOptions& o) -> auto& { return o.adamw.weight_decay; }),
      keep("clip", "optimizer", "clip", [](TrainOptions& o) -> auto& { return o.clip; }),
      keep("seq-len", "data", "seq_len", [](TrainOptions& o) -> auto& { return o.data.seq_len; }),
      keep("copy-tokens", "data", "copy_tokens", [](TrainOptions& o) -> auto& { return o.data.copy_tokens; }),
      keep("copy-slots", "data", "copy_slots", [](TrainOptions& o) -> auto& { return o.data.copy_slots; }),
      keep("task-vocab", "data", "task_vocab", [](TrainOptions& o) -> auto& { return o.data.task_vocab; }),
      keep("eod-token", "data", "eod_token", [](TrainOptions& o) -> auto& { return o.data.eod_token; }),
      keep("eval-fraction", "data", "eval_fraction", [](TrainOptions& o) -> auto& { return o.data.eval_fraction; }),
      keep("eval-data", "data", "eval_data", [](TrainOptions& o) -> auto& { return o.data.eval_data; }),
      prefer("microbatches", "microbatches", [](TrainOptions& o) -> auto& { return o.microbatches; }),
      prefer("microbatch-size", "microbatch_size", [](TrainOptions& o) -> auto& { return o.microbatch_size; }),
      prefer("schedule", "schedule", [](TrainOptions& o) -> auto& { return o.schedule; }),
      prefer("autocast", "autocast", [](TrainOptions& o) -> auto& { return o.autocast; }),
      prefer("grad-reduce", "grad_reduce", [](TrainOptions& o) -> auto& { return o.grad_reduce; }),
      runtime("stop-after", [](TrainOptions& o) -> auto& { return o.stop_after; }),
      runtime("pp", [](TrainOptions& o) -> auto& { return o.pp; }),
      runtime("dp", [](TrainOptions& o) -> auto& { return o.dp; }),
      runtime("zero", [](TrainOptions& o) -> auto& { return o.zero; }),
      runtime("boundary", [](TrainOptions& o) -> auto& { return o.boundary; }),
      runtime("ckpt-dir", [](TrainOptions& o) -> auto& { return o.ckpt_dir; }),
      runtime("overwrite", [](TrainOptions& o) -> auto& { return o.overwrite; }),
      runtime("ckpt-every", [](TrainOptions& o) -> auto& { return o.ckpt_every; }),
      runtime("keep-last", [](TrainOptions& o) -> auto& { return o.keep_last; }),
      runtime("compression", [](TrainOptions& o) -> auto& { return o.compression; }),
      runtime("async-ckpt", [](TrainOptions& o) -> auto& { return o.async_ckpt; }),
      runtime("ckpt-priority", [](TrainOptions& o) -> auto& { return o.ckpt_priority; }),
      runtime("eval-every", [](TrainOptions& o) -> auto& { return o.eval_every; }),
      runtime("eval-samples", [](TrainOptions& o) -> auto& { return o.eval_samples; }),
  };
  return table;
}

void write_run_settings(const TrainOptions& options, ojson& t) {
  TrainOptions& o = const_cast<TrainOptions&>(options);  // read only: the table hands out references
  for (const RunSetting& s : run_settings()) {
    if (s.resume == RunSetting::kRuntime) continue;
    ojson& dst = *s.section ? t[s.section] : t;
    std::visit([&](auto* v) { dst[s.key] = *v; }, s.ref(o));
  }
  // Derived, and checked on resume: the global batch a step takes.
  t["batch"]["samples_per_step"] = static_cast<int64_t>(o.microbatches) * o.microbatch_size;
}

void restore_run_settings(TrainOptions& o, const ojson& t, const std::string& dir) {
  for (const RunSetting& s : run_settings()) {
    if (s.resume == RunSetting::kRuntime) continue;
    const ojson& parent = section_of(t, s.section);
    if (!parent.is_object() || !parent.contains(s.key)) continue;
    const bool given = o.given.count(s.option) != 0;
    std::visit(
        [&](auto* v) {
          using T = std::remove_pointer_t<decltype(v)>;
          const T was = parent.at(s.key).get<T>();
          if (s.resume == RunSetting::kPrefer) {
            if (!given) *v = was;
            return;
          }
          if (given && !(*v == was)) {
            throw UsageError("--" + std::string(s.option) + " " + show(*v) + " differs from the run resumed from '" + dir +
                             "' (" + show(was) + "); a resumed run keeps its settings: leave --" + s.option +
                             " out, or start a new run");
          }
          *v = was;
        },
        s.ref(o));
  }
  const ojson& batch = section_of(t, "batch");
  if (batch.is_object() && batch.contains("samples_per_step")) {
    const int64_t was = batch.at("samples_per_step").get<int64_t>();
    const int64_t now = static_cast<int64_t>(o.microbatches) * o.microbatch_size;
    if (now != was) {
      throw UsageError("--microbatches " + std::to_string(o.microbatches) + " x --microbatch-size " +
                       std::to_string(o.microbatch_size) + " = " + std::to_string(now) +
                       " samples per step, but the run resumed from '" + dir + "' takes " + std::to_string(was) +
                       "; a resumed run may split its batch differently, not change its size");
    }
  }
}

std::vector<HeaderField> run_setting_fields(const TrainOptions& options) {
  TrainOptions& o = const_cast<TrainOptions&>(options);
  std::vector<HeaderField> fields;
  for (const RunSetting& s : run_settings()) {
    const std::string name = std::string("--") + s.option;
    std::visit(
        [&](auto* v) {
          using T = std::remove_pointer_t<decltype(v)>;
          if constexpr (std::is_same_v<T, double>) {
            fields.push_back(HeaderField::real(name, *v));
          } else if constexpr (std::is_same_v<T, std::string>) {
            fields.push_back(HeaderField::text(name, *v));
          } else if constexpr (std::is_same_v<T, bool>) {
            fields.push_back(HeaderField::integer(name, *v ? 1 : 0));
          } else {
            fields.push_back(HeaderField::integer(name, static_cast<int64_t>(*v)));
          }
        },
        s.ref(o));
  }
  return fields;
}

}  // namespace pmamba::pp
