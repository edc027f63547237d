// Any bytes as a model folder's config.json (src/interop/convert.h): refused with a ConvertError
// naming the file, or translated into a valid pmamba config. An accepted config must then
// survive the way out and back: export_config for its architecture (or a ConvertError saying
// transformers has no class for it) and translating that text again gives the same model.
// Anything else that escapes (a json::type_error, a ConfigError not turned into ConvertError, a
// model that validates on the way in and not on the way back) is a finding.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "src/interop/convert.h"
#include "src/interop/errors.h"
#include "src/model/config.h"

using namespace pmamba;
using namespace pmamba::interop;

namespace {

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "finding: %s\n", what.c_str());
  std::abort();
}

std::string dump(const nlohmann::ordered_json& j) {
  // As export writes it: Python's bare Infinity for an infinite limit.
  std::string text = j.dump(2);
  for (size_t at = text.find("\"@pmamba-infinity@\""); at != std::string::npos; at = text.find("\"@pmamba-infinity@\"", at)) {
    text.replace(at, 19, "Infinity");
  }
  return text;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  TranslatedConfig t;
  try {
    t = translate_config_text(text, "config.json");
  } catch (const ConvertError& e) {
    if (std::string(e.what()).find("config.json") == std::string::npos) finding(std::string("unnamed file: ") + e.what());
    return 0;
  } catch (const std::exception& e) {
    finding(std::string("translate_config let another exception escape: ") + e.what());
  }
  try {
    t.config.validate();
  } catch (const std::exception& e) {
    finding(std::string("an accepted config does not validate: ") + e.what());
  }
  Architecture arch = Architecture::kMambaSsm;
  if (t.architecture != Architecture::kMambaSsm) {
    try {
      arch = hf_architecture_for(t.config);
    } catch (const ConvertError&) {
      arch = Architecture::kMambaSsm;  // imported from HF, but only mamba_ssm can hold it (e.g. ngroups > 1 is fine)
    } catch (const std::exception& e) {
      finding(std::string("hf_architecture_for let another exception escape: ") + e.what());
    }
  }
  nlohmann::ordered_json out;
  try {
    out = export_config(t.config, arch, t.recorded, "float32");
  } catch (const ConvertError&) {
    return 0;  // e.g. mamba_ssm has no norm_eps other than 1e-5
  } catch (const std::exception& e) {
    finding(std::string("export_config let another exception escape: ") + e.what());
  }
  try {
    TranslatedConfig back = translate_config_text(dump(out), "exported config.json");
    // The exported vocabulary is the padded one (transformers has no padding).
    model::MambaConfig want = t.config;
    if (arch != Architecture::kMambaSsm) {
      want.vocab_size = want.padded_vocab();
      want.pad_vocab_size_multiple = 1;
    }
    if (back.config != want) {
      finding("export and re-import changed the model: " + model::config_to_json_string(t.config) + " -> " +
              model::config_to_json_string(back.config));
    }
  } catch (const std::exception& e) {
    finding(std::string("an exported config does not translate back: ") + e.what() + "\n" + dump(out));
  }
  return 0;
}
