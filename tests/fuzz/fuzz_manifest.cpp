// manifest.json (and the model config inside it): any bytes either parse into a manifest that
// passes every check, or are refused with a FormatError. What parses must serialise and parse
// back to the same manifest.
#include "src/ckpt/check.h"
#include "src/ckpt/manifest.h"
#include "src/model/config.h"
#include "tests/fuzz/fuzz_util.h"

using namespace pmamba;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::expect_clean("manifest_from_json (collecting)", [&] {
    ckpt::Manifest m;
    ckpt::Problems problems(ckpt::Problems::Mode::kCollect);
    if (!ckpt::manifest_from_json(text, "fuzz", m, problems) || !problems.empty()) return;
    const std::string again = ckpt::manifest_to_json(m);
    // Accepted once, accepted again: a manifest pmamba writes from what it read must load.
    const ckpt::Manifest back = ckpt::manifest_from_json(again, "round trip");
    if (ckpt::manifest_to_json(back) != again) {
      std::fprintf(stderr, "finding: a manifest does not survive a round trip\n");
      std::abort();
    }
  });
  fuzz::expect_clean("manifest_from_json", [&] { ckpt::manifest_from_json(text, "fuzz"); });
  fuzz::expect_clean("config_from_json_string", [&] { model::config_from_json_string(text); });
  return 0;
}
