// pmamba-eval: run a Mamba LM as a chain of pipeline stages and write its logits.
#include <cstdio>

#include "src/pp/eval.h"
#include "tools/tool_main.h"

int main(int argc, char** argv) {
  CLI::App app{"Run a Mamba LM split into pipeline stages on token sequences; report loss and "
               "accuracy and write the logits.",
               "pmamba-eval"};
  app.footer(
      "Examples:\n"
      "  pmamba-eval --preset tiny --seed 7 --tokens 1,2,3,4 --logits-out a.h5\n"
      "  pmamba-eval --preset tiny --seed 7 --pp 3 --partition 0,3,1 --boundary summed "
      "--tokens 1,2,3,4 --logits-out b.h5\n"
      "Exit codes: 0 ok, 2 bad arguments or unreadable input, 3 internal error.");
  pmamba::pp::EvalOptions o;
  std::string boundary = "packed";
  auto* src = app.add_option_group("model", "where the weights come from");
  src->add_option("--preset", o.preset, "model preset (tiny, small, mamba-130m, ...)");
  src->add_option("--config", o.config_path, "model config JSON file");
  src->add_option("--ckpt", o.ckpt, "checkpoint root or step directory");
  src->require_option(1);
  app.add_option("--seed", o.seed, "initialisation seed (with --preset/--config)");
  app.add_option("--pp", o.pp, "number of pipeline stages")->check(CLI::Range(1, 4096));
  app.add_option("--partition", o.partition, "layers per stage, e.g. 3,5,4 (default balanced)");
  app.add_option("--boundary", boundary, "stage boundary tensor: packed or summed")
      ->check(CLI::IsMember({"packed", "summed"}));
  auto* toks = app.add_option_group("input", "token ids");
  toks->add_option("--tokens", o.tokens, "one sequence, e.g. 1,2,3,4");
  toks->add_option("--tokens-file", o.tokens_file, "one sequence per line");
  toks->require_option(1);
  app.add_option("--logits-out", o.logits_out, "write logits to this HDF5 file (dataset /logits)");
  app.add_option("--threads", o.threads, "intra-op threads (0 = LibTorch default)")
      ->check(CLI::Range(0, 1024));
  return pmamba::tools::run_tool(app, argc, argv, [&] {
    o.boundary = pmamba::model::parse_boundary(boundary);
    const auto r = pmamba::pp::run_eval(o);
    std::printf("stages %s  boundary %s  sequences %lld  tokens %lld\n", r.partition.c_str(),
                boundary.c_str(), static_cast<long long>(r.logits.size(0)),
                static_cast<long long>(r.logits.size(1)));
    if (r.predictions > 0) {
      std::printf("loss %.6f  accuracy %.4f  (%lld next-token predictions)\n", r.loss, r.accuracy,
                  static_cast<long long>(r.predictions));
    }
    if (!o.logits_out.empty()) std::printf("logits -> %s\n", o.logits_out.c_str());
    return 0;
  });
}
