// The run settings of pmamba-train in one table: what a checkpoint's training state records
// about the run, how a resume restores it, and what the stages compare in their handshake.
// Each setting is declared once here; adding one to the table adds it to all three.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <variant>
#include <vector>

#include "src/pp/handshake.h"
#include "src/pp/train.h"

namespace pmamba::pp {

struct RunSetting {
  enum Resume {
    kKeep,     // a resumed run keeps the recorded value; a different one given is an error
    kPrefer,   // how the batch is computed: the recorded value unless the command line gives one
    kRuntime,  // not recorded (the layout, where checkpoints go): compared between stages only
  };
  using Ref = std::variant<int*, int64_t*, uint64_t*, double*, std::string*, bool*>;
  const char* option;   // long option name without dashes ("lr"); the handshake calls it "--lr"
  const char* section;  // training-state object holding it ("" = top level; unused for kRuntime)
  const char* key;      // its key there
  Resume resume;
  std::function<Ref(TrainOptions&)> ref;
};

/// Every setting, in the order the training state lists them.
const std::vector<RunSetting>& run_settings();

/// The recorded settings (kKeep, kPrefer) written into the training-state object `t`, section by
/// section, in table order.
void write_run_settings(const TrainOptions& o, nlohmann::ordered_json& t);

/// A resumed run's settings from its checkpoint's training state: a kKeep setting takes the
/// recorded value and a different given one is an error (UsageError naming the option, both
/// values and `dir`); a kPrefer setting takes the recorded value unless given. Settings the
/// state does not record keep their values.
void restore_run_settings(TrainOptions& o, const nlohmann::ordered_json& t, const std::string& dir);

/// One handshake field per setting ("--lr"), in table order.
std::vector<HeaderField> run_setting_fields(const TrainOptions& o);

}  // namespace pmamba::pp
