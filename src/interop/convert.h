// pmamba-convert: Hugging Face / mamba_ssm model folders <-> pmamba checkpoints.
//
// Import reads a folder (config.json plus model.safetensors, or model.safetensors.index.json and
// its shards) of a transformers MambaForCausalLM, Mamba2ForCausalLM or BambaForCausalLM, or of
// mamba_ssm's MambaLMHeadModel (its own config.json, mamba_ssm FQNs), and writes a committed
// weights-only pmamba checkpoint at step 0 (docs/FORMAT.md §5a). Export writes the other way:
// safetensors under HF's (or mamba_ssm's) names, the sharded index when there is more than one
// file, and a config.json the target library loads.
//
// Names (reference/scale-out.md §4): HF Mamba and Mamba-2 use mamba_ssm's FQNs except
// `backbone.embeddings.weight`; HF Bamba renames everything (`model.embed_tokens`,
// `model.layers.{i}.mamba.*`, `input_layernorm`, `pre_ff_layernorm`, `model.final_layernorm`)
// and splits two pmamba tensors: attention in_proj = rows of q_proj, k_proj, v_proj, and the
// MLP's fc1 = rows of up_proj (the value half) then gate_proj. A tied lm_head is not stored.
//
// Both directions hold one tensor at a time (the parts of one split tensor at most), read with
// pread from the safetensors files or the checkpoint's shards: memory is of the order of the
// largest tensor, not of the model.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "src/model/config.h"

namespace pmamba::interop {

/// The model classes import reads and export writes.
enum class Architecture { kHfMamba, kHfMamba2, kHfBamba, kMambaSsm };
const char* architecture_name(Architecture a);  // "MambaForCausalLM", ..., "mamba_ssm MambaLMHeadModel"

/// A source config read into pmamba's: the model config, and what the source said that does not
/// change the forward math (token ids, init schemes, use_cache, ...), kept verbatim.
struct TranslatedConfig {
  Architecture architecture = Architecture::kHfMamba;
  model::MambaConfig config;
  nlohmann::ordered_json recorded = nlohmann::ordered_json::object();
  std::vector<std::string> notes;  // caveats worth telling the user (one line each)
};

/// A config.json (HF or mamba_ssm, told apart by its keys) -> pmamba. Fields that change the
/// math and that pmamba cannot represent are refused by name (ConvertError naming `where`, the
/// field, its value and why); HF's vocabulary size is kept exactly (no padding).
TranslatedConfig translate_config(const nlohmann::json& source, const std::string& where);

/// The same from a config.json's text, as transformers writes it (bare Infinity / NaN tokens
/// allowed; duplicate keys, invalid UTF-8 or JSON refused): ConvertError naming `where`.
TranslatedConfig translate_config_text(const std::string& text, const std::string& where);

/// The config.json export writes for `arch`: keys in the order transformers writes them, plus
/// `recorded` fields (from an import) that the target knows. Throws ConvertError when the model
/// cannot be expressed as `arch` (naming what does not fit, and which format can hold it).
nlohmann::ordered_json export_config(const model::MambaConfig& config, Architecture arch,
                                     const nlohmann::ordered_json& recorded, const std::string& torch_dtype);

/// The architecture `--format hf` picks for a config: plain Mamba-1 -> MambaForCausalLM, Mamba-2
/// without MLP or attention -> Mamba2ForCausalLM, Mamba-2 with a gated MLP in every block (and
/// any attention layers) -> BambaForCausalLM. Throws ConvertError for anything else.
Architecture hf_architecture_for(const model::MambaConfig& config);

/// One pmamba parameter and the source tensors it is made of: rows of `parts` concatenated
/// along dim 0, in order (one part for everything but the Bamba splits).
struct NamePart {
  std::string name;
  int64_t rows = 0;  // rows of the pmamba tensor this part holds
};
struct NameMapping {
  std::string fqn;
  std::vector<int64_t> shape;  // the pmamba tensor's
  std::vector<NamePart> parts;
};
/// Every stored tensor of `config` under `arch`'s names, in canonical FQN order; a tied lm_head
/// has no entry (export omits it, import checks it equals the embedding when a source has it).
std::vector<NameMapping> name_mappings(const model::MambaConfig& config, Architecture arch);

/// "5GB", "500MB", "20KB", "1GiB", "123" (bytes); decimal units as transformers reads them.
/// Throws ConvertError for anything else, or for 0.
uint64_t parse_size(const std::string& text);

struct ImportOptions {
  std::string src;                  // model folder
  std::string out;                  // checkpoint root to create (must not exist, or be empty)
  int pp = 1;
  std::string partition;            // "" = balanced
  std::string compression = "zstd:1";
  std::string dtype = "keep";       // keep | float32 | bfloat16
  int threads = 0;                  // compression threads (0 = all cores)
  std::function<void(int64_t done, int64_t total)> progress;  // bytes converted
};

struct ImportResult {
  std::string out_dir;             // the committed step directory
  Architecture architecture = Architecture::kHfMamba;
  model::MambaConfig config;
  int64_t tensors = 0;             // pmamba tensors written
  int64_t source_bytes = 0;        // tensor bytes read from the source
  std::vector<std::string> notes;  // from the config translation and the tensors (a tied head dropped, ...)
};

/// Import (see the top). Nothing is committed unless every tensor the config needs is found
/// with the right shape and every source tensor is used; a failure leaves no output behind.
/// Throws ConvertError (bad or unsupported source), SafetensorsError, ckpt errors.
ImportResult import_model(const ImportOptions& options);

struct ExportOptions {
  std::string ckpt;                 // checkpoint root or step directory
  std::string out;                  // folder to create (must not exist, or be empty)
  std::string format = "hf";        // hf | mamba_ssm
  std::string dtype = "keep";       // keep | float32 | bfloat16
  uint64_t max_shard_bytes = 5000000000ull;  // tensor bytes per safetensors file (transformers' 5GB)
  std::function<void(int64_t done, int64_t total)> progress;
};

struct ExportResult {
  std::string out;
  Architecture architecture = Architecture::kHfMamba;
  std::vector<std::string> files;  // safetensors files written, in order
  int64_t tensors = 0;
  int64_t bytes = 0;               // tensor bytes written
};

/// Export (see the top). The safetensors files are written atomically one by one, then the
/// index and config.json; a failure removes what this call wrote.
ExportResult export_model(const ExportOptions& options);

}  // namespace pmamba::interop
