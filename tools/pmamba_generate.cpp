// pmamba-generate: generate tokens from a checkpoint, at any pipeline degree.
#include "src/gen/generate.h"
#include "tools/tool_main.h"

int main(int argc, char** argv) {
  // Decoding runs hundreds of tiny parallel regions per token (tool_main.h says why).
  pmamba::tools::prepare_compute_process(argv);
  CLI::App app{"Generate tokens from a Mamba LM: prefill each prompt, then one recurrent step per token, with the "
               "stages as processes at --pp N. stdout holds only the generated ids (one line per prompt, the same "
               "at every --pp); timings go to stderr.",
               "pmamba-generate"};
  app.footer(
      "Examples:\n"
      "  pmamba-generate --ckpt c --prompt-tokens 1,2,3 --max-new-tokens 16                 # greedy\n"
      "  pmamba-generate --ckpt c --prompt-tokens 1,2,3 --max-new-tokens 16 --seed 1 --temperature 0.8 --top-p 0.9 --pp 2\n"
      "  pmamba-generate --ckpt c --prompt-file prompts.txt --batch 8 --stop-token 0 --json\n"
      "Sampling follows transformers' order: repetition penalty, temperature, top-k, top-p, min-p. --temperature 0\n"
      "(the default) is greedy. Each prompt's random stream is seeded by (--seed, its index).\n"
      "Exit codes: 0 ok, 1 a stage failed or stopped answering, 2 bad arguments or unreadable input, 3 internal error.");
  pmamba::gen::GenerateOptions o;
  auto* src = app.add_option_group("model", "where the weights come from");
  src->add_option("--ckpt", o.ckpt, "checkpoint root or step directory");
  src->add_option("--preset", o.preset, "model preset with random weights (benchmarks)");
  src->add_option("--config", o.config_path, "model config JSON file with random weights");
  src->require_option(1);
  pmamba::tools::add_u64_option(app, "--init-seed", o.init_seed, "with --preset/--config: initialisation seed");
  auto* prompts = app.add_option_group("prompts");
  prompts->add_option("--prompt-tokens", o.prompt_tokens, "one prompt of token ids, e.g. 1,2,3");
  prompts->add_option("--prompt-file", o.prompt_file, "one prompt per line (ids separated by commas or spaces)");
  prompts->add_option("--prompt", o.prompt_text, "a text prompt as bytes (byte-vocabulary models)");
  prompts->require_option(1);
  app.add_option("--max-new-tokens", o.max_new_tokens, "tokens to generate per prompt (at most)");
  app.add_option("--stop-token", o.stop_tokens, "a row stops after emitting this id (repeatable)")->delimiter(',');
  app.add_option("--temperature", o.sampling.temperature, "0 = greedy (default); > 0 samples");
  app.add_option("--top-k", o.sampling.top_k, "keep the k most likely ids (0 = off)");
  app.add_option("--top-p", o.sampling.top_p, "keep the most likely ids up to this probability mass (1 = off)");
  app.add_option("--min-p", o.sampling.min_p, "drop ids below this fraction of the top probability (0 = off)");
  app.add_option("--repetition-penalty", o.sampling.repetition_penalty, "> 1 discourages ids already seen (1 = off)");
  pmamba::tools::add_u64_option(app, "--seed", o.sampling.seed, "sampling seed");
  app.add_option("--batch", o.batch, "prompts decoded together (default 8)");
  app.add_option("--pp", o.pp, "pipeline stages (processes)")->check(CLI::Range(1, 4096));
  app.add_option("--partition", o.partition, "layers per stage, e.g. 3,5,4 (default balanced)");
  app.add_flag("--json", o.json, "print one JSON document instead of the id lines");
  app.add_option("--device", o.device, "cpu, cuda (the local rank's GPU), cuda:N, or auto (CUDA when available)");
  app.add_option("--backend", o.backend, "c10d backend between stages: gloo, nccl, or auto (NCCL on CUDA)")
      ->check(CLI::IsMember({"auto", "gloo", "nccl"}));
  app.add_option("--threads", o.threads, "intra-op threads (0 = LibTorch default)");
  app.add_flag("--inproc", o.inproc, "chain the stages in this process (default: one process per stage)");
  app.add_option("--timeout", o.timeout_s, "seconds to wait for another stage");
  return pmamba::tools::run_tool(app, argc, argv, [&] { return pmamba::gen::generate_main(o, argc, argv); });
}
