// Test helper: writes a checkpoint of a small model at a given step into a root directory, so
// the crash-safety tests can kill it (PMAMBA_FAULT or SIGKILL from outside) mid-commit.
//   pmamba_ckpt_fault_writer ROOT STEP [preset] [pp] [compression] [keep_last]
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "src/ckpt/checkpoint.h"
#include "src/pp/state.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s ROOT STEP [preset] [pp] [compression] [keep_last]\n", argv[0]);
    return 2;
  }
  const std::string root = argv[1];
  const int64_t step = std::atoll(argv[2]);
  const std::string preset = argc > 3 ? argv[3] : "tiny";
  const int pp = argc > 4 ? std::atoi(argv[4]) : 2;
  const std::string compression = argc > 5 ? argv[5] : "zstd";
  const int keep = argc > 6 ? std::atoi(argv[6]) : 0;
  try {
    const auto config = pmamba::model::preset(preset);
    const auto stages = pmamba::model::make_stages(config.n_layer, pp, "");
    pmamba::ckpt::SaveOptions opts;
    opts.write.compression = pmamba::ckpt::Compression::parse(compression);
    opts.keep_last = keep;
    // The seed depends on the step so every checkpoint holds different bytes.
    const std::string dir = pmamba::ckpt::save_checkpoint(
        root, step, config, stages, pmamba::pp::initial_train_state(static_cast<uint64_t>(step), step), opts,
        [&](const pmamba::model::StageSpec& spec) {
          pmamba::model::MambaLM m(config, spec);
          m->init_parameters(static_cast<uint64_t>(step));
          return pmamba::pp::collect_stage(*m, nullptr);
        });
    std::printf("%s\n", dir.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fault_writer: %s\n", e.what());
    return 1;
  }
}
