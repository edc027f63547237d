// Raw byte mutations of a whole shard file, read by every reader. Not a gate (make fuzz-raw):
// HDF5 parses the container itself, inside Debian's uninstrumented libhdf5, and a crash there
// is not pmamba's to fix; what it finds is listed in tests/fuzz/README.md (docs/FORMAT.md,
// trust model). A crash inside pmamba's own code is a finding like any other.
#include <filesystem>
#include <nlohmann/json.hpp>

#include "src/ckpt/checkpoint.h"
#include "src/ckpt/h5.h"
#include "src/ckpt/verify.h"
#include "src/ckpt/zstd_filter.h"
#include "src/pp/state.h"
#include "tests/fuzz/fuzz_util.h"

using namespace pmamba;
namespace stdfs = std::filesystem;

namespace {
std::string g_manifest;  // a one-stage micro checkpoint's manifest
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  ckpt::h5::Silence quiet;
  ckpt::register_zstd_filter();
  const model::MambaConfig c = fuzz::micro_config(1);
  const auto stages = model::make_stages(c.n_layer, 1, "");
  ckpt::SaveOptions o;
  o.write.compression = ckpt::Compression::parse("zstd:1");
  const std::string step = ckpt::save_checkpoint(fuzz::scratch("raw-template"), 0, c, stages, pp::initial_train_state(0), o,
                                                 [&](const model::StageSpec& s) {
                                                   model::MambaLM m(c, s);
                                                   m->init_parameters(0);
                                                   return pp::collect_stage(*m, nullptr);
                                                 });
  g_manifest = ckpt::fs::read_file(step + "/manifest.json");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ckpt::h5::Silence quiet;
  const std::string step = fuzz::scratch("raw") + "/step-00000000";
  ckpt::fs::make_dirs(step);
  const std::string shard = step + "/stage-00-of-01.h5";
  fuzz::write_bytes(shard, std::string(reinterpret_cast<const char*>(data), size));
  nlohmann::ordered_json m = nlohmann::ordered_json::parse(g_manifest);
  m["layout"]["stages"][0]["bytes"] = static_cast<int64_t>(size);
  fuzz::write_bytes(step + "/manifest.json", m.dump());
  fuzz::expect_clean("ShardReader", [&] {
    ckpt::ShardReader r(shard);
    r.aliases();
    r.scan();
  });
  fuzz::expect_clean("verify_checkpoint", [&] { ckpt::verify_checkpoint(step, ckpt::VerifyOptions{false, 1}); });
  fuzz::expect_no_open_hdf5_ids("the readers");
  return 0;
}
