// pmamba-ckpt: create, inspect, verify and compare pmamba checkpoints.
#include <cstdio>

#include "src/pp/state.h"
#include "tools/tool_main.h"

int main(int argc, char** argv) {
  CLI::App app{"Create, inspect, verify and compare pmamba checkpoints.", "pmamba-ckpt"};
  app.require_subcommand(1);
  app.footer("Exit codes: 0 ok/equal, 1 invalid/different, 2 usage error or unreadable input, 3 internal error.");

  pmamba::pp::InitOptions init;
  auto* init_cmd = app.add_subcommand("init", "write a committed seed checkpoint (step 0, zeroed optimizer state)");
  init_cmd->footer("Example:\n  pmamba-ckpt init c --preset tiny --seed 3 --pp 2 --compression zstd");
  init_cmd->add_option("out", init.out, "checkpoint root directory")->required();
  auto* src = init_cmd->add_option_group("model");
  src->add_option("--preset", init.preset, "model preset (tiny, small, mamba-130m, ...)");
  src->add_option("--config", init.config_path, "model config JSON file");
  src->require_option(1);
  init_cmd->add_option("--seed", init.seed, "initialisation seed");
  init_cmd->add_option("--pp", init.pp, "number of stages (shards)")->check(CLI::Range(1, 4096));
  init_cmd->add_option("--partition", init.partition, "layers per stage, e.g. 3,5,4");
  init_cmd->add_option("--compression", init.compression, "none, zstd or zstd:LEVEL (default zstd)");
  init_cmd->add_option("--threads", init.threads, "compression threads (0 = all cores)");

  return pmamba::tools::run_tool(app, argc, argv, [&]() -> int {
    if (*init_cmd) {
      const std::string dir = pmamba::pp::init_checkpoint(init);
      std::printf("committed %s\n", dir.c_str());
      return 0;
    }
    return 2;
  });
}
