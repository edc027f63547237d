// pmamba-ckpt: create, inspect, verify and compare pmamba checkpoints.
#include <cstdio>

#include <iostream>

#include "src/ckpt/diff.h"
#include "src/ckpt/inspect.h"
#include "src/ckpt/verify.h"
#include "src/pp/plan.h"
#include "src/pp/state.h"
#include "tools/tool_main.h"

int main(int argc, char** argv) {
  CLI::App app{"Create, inspect, verify and compare pmamba checkpoints.", "pmamba-ckpt"};
  app.require_subcommand(1);
  app.footer("Exit codes: 0 ok/equal, 1 invalid/different, 2 usage error or unreadable input, 3 internal error.");

  pmamba::pp::InitOptions init;
  bool init_json = false;
  auto* init_cmd = app.add_subcommand("init", "write a committed seed checkpoint (step 0, zeroed optimizer state)");
  init_cmd->footer("Example:\n  pmamba-ckpt init c --preset tiny --seed 3 --pp 2 --compression zstd\n"
                   "OUT must be a new or empty directory; the checkpoint starts a run of its own.");
  init_cmd->add_option("out", init.out, "checkpoint root directory")->required();
  auto* src = init_cmd->add_option_group("model");
  src->add_option("--preset", init.preset, "model preset (tiny, small, mamba-130m, ...)");
  src->add_option("--config", init.config_path, "model config JSON file");
  src->require_option(1);
  pmamba::tools::add_u64_option(*init_cmd, "--seed", init.seed, "initialisation seed");
  init_cmd->add_option("--pp", init.pp, "number of stages (shards)")->check(CLI::Range(1, 4096));
  init_cmd->add_option("--partition", init.partition, "layers per stage, e.g. 3,5,4");
  init_cmd->add_option("--compression", init.compression, "none, zstd or zstd:LEVEL (default zstd)");
  init_cmd->add_option("--threads", init.threads, "compression threads (0 = all cores)");
  init_cmd->add_flag("--json", init_json, "print the result as JSON");

  std::string path, path_b;
  bool json = false, all = false, verbose = false;

  auto* info_cmd = app.add_subcommand("info", "step, config, PP layout, tensor and byte counts");
  info_cmd->add_option("dir", path, "checkpoint root or step directory")->required();
  info_cmd->add_flag("--json", json, "one JSON object");

  auto* ls_cmd = app.add_subcommand("ls", "every FQN with shape, dtype, owner stage, stored bytes, digest");
  ls_cmd->add_option("dir", path, "checkpoint root or step directory")->required();
  ls_cmd->add_flag("--all", all, "list optimizer state too (fqn:exp_avg, ...)");
  ls_cmd->add_flag("--json", json, "one JSON object");

  pmamba::ckpt::VerifyOptions vopt;
  auto* verify_cmd = app.add_subcommand("verify", "check digests, completeness, shapes, ties; exit 1 on any problem");
  verify_cmd->footer("Example:\n  pmamba-ckpt verify run/ckpt --finite");
  verify_cmd->add_option("dir", path, "checkpoint root or step directory")->required();
  verify_cmd->add_flag("--finite", vopt.finite, "also report NaN/Inf values");
  verify_cmd->add_option("--threads", vopt.threads, "decompression threads");
  verify_cmd->add_flag("--json", json, "one JSON object");

  pmamba::ckpt::DiffOptions dopt;
  auto* diff_cmd = app.add_subcommand("diff", "compare two checkpoints FQN by FQN, whatever their layouts");
  diff_cmd->footer("Examples:\n  pmamba-ckpt diff pp4/ pp1/\n  pmamba-ckpt diff a b --atol 1e-6 --rtol 1e-5 --params-only\n"
                   "  pmamba-ckpt diff a b --top 3                # the 3 tensors that differ most");
  diff_cmd->add_option("a", path, "first checkpoint")->required();
  diff_cmd->add_option("b", path_b, "second checkpoint")->required();
  auto* atol = diff_cmd->add_option("--atol", dopt.atol, "absolute tolerance (tolerance mode)");
  auto* rtol = diff_cmd->add_option("--rtol", dopt.rtol, "relative tolerance (tolerance mode)");
  diff_cmd->add_flag("--params-only", dopt.params_only, "skip optimizer state");
  diff_cmd->add_flag("--decode", dopt.decode, "read and compare every tensor's bytes (default: equal digests count as equal)");
  int64_t top = 10;
  diff_cmd->add_option("--top", top, "list the N tensors that differ most, largest max |a-b| first (0 = all)")
      ->check(CLI::NonNegativeNumber);
  diff_cmd->add_flag("--verbose", verbose, "also list equal tensors");
  diff_cmd->add_flag("--json", json, "one JSON object");

  std::string params_preset, params_config;
  auto* params_cmd = app.add_subcommand("params", "a model's FQN table and parameter count, from the config alone");
  params_cmd->footer("Example:\n  pmamba-ckpt params --preset bamba-9b --json");
  auto* psrc = params_cmd->add_option_group("model");
  psrc->add_option("--preset", params_preset, "model preset (tiny, mamba2-130m, bamba-9b, ...)");
  psrc->add_option("--config", params_config, "model config JSON file (pmamba's or mamba_ssm's config.json)");
  psrc->require_option(1);
  params_cmd->add_flag("--json", json, "one JSON object");

  return pmamba::tools::run_tool(app, argc, argv, [&]() -> int {
    if (*params_cmd) {
      const auto config = params_preset.empty() ? pmamba::pp::load_config_file(params_config)
                                                : pmamba::model::preset(params_preset);
      pmamba::ckpt::print_params(config, std::cout, json);
      return 0;
    }
    if (*init_cmd) {
      const std::string dir = pmamba::pp::init_checkpoint(init);
      if (init_json) {
        std::printf("{\"committed\": \"%s\"}\n", dir.c_str());
      } else {
        std::printf("committed %s\n", dir.c_str());
      }
      return 0;
    }
    if (*info_cmd) {
      pmamba::ckpt::print_info(path, std::cout, json);
      return 0;
    }
    if (*ls_cmd) {
      pmamba::ckpt::print_ls(path, std::cout, json, all);
      return 0;
    }
    if (*verify_cmd) {
      const auto report = pmamba::ckpt::verify_checkpoint(path, vopt);
      pmamba::ckpt::print_verify(report, std::cout, json);
      return report.ok() ? 0 : 1;
    }
    if (*diff_cmd) {
      dopt.tolerance = atol->count() > 0 || rtol->count() > 0;
      const auto report = pmamba::ckpt::diff_checkpoints(path, path_b, dopt);
      pmamba::ckpt::print_diff(report, std::cout, json, verbose, top);
      return report.equal() ? 0 : 1;
    }
    return 2;
  });
}
