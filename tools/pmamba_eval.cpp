// pmamba-eval: run a Mamba LM as a chain of pipeline stages and write its logits.
#include "src/pp/eval.h"
#include "tools/tool_main.h"

int main(int argc, char** argv) {
  pmamba::tools::prepare_compute_process(argv);
  CLI::App app{"Run a Mamba LM split into pipeline stages on token sequences; report loss and "
               "accuracy and write the logits.",
               "pmamba-eval"};
  app.footer(
      "Examples:\n"
      "  pmamba-eval --preset tiny --seed 7 --tokens 1,2,3,4 --logits-out a.h5\n"
      "  pmamba-eval --preset tiny --seed 7 --pp 3 --partition 0,3,1 --boundary summed "
      "--tokens 1,2,3,4 --logits-out b.h5\n"
      "  pmamba-eval --ckpt run --pp 1                      # the held-out set of the data it trained on\n"
      "  pmamba-eval --ckpt run --data selective-copy --samples 100000 --batch-size 256 --json\n"
      "  pmamba-eval --ckpt run --data corpus --all --seq-len 512  # every held-out window once, at another length\n"
      "Options given here override what the checkpoint recorded (sequence length, task sizes, data seed); the output's\n"
      "header states the values that ran. An option that cannot apply to the input is refused.\n"
      "Exit codes: 0 ok, 1 a stage failed or stopped answering, 2 bad arguments or unreadable input, 3 internal error.");
  pmamba::pp::EvalOptions o;
  std::string boundary = "packed";
  auto* src = app.add_option_group("model", "where the weights come from");
  src->add_option("--preset", o.preset, "model preset (tiny, small, mamba-130m, ...)");
  src->add_option("--config", o.config_path, "model config JSON file");
  src->add_option("--ckpt", o.ckpt, "checkpoint root or step directory");
  src->require_option(1);
  pmamba::tools::add_u64_option(app, "--seed", o.seed, "initialisation seed (with --preset/--config)");
  app.add_option("--pp", o.pp, "number of pipeline stages")->check(CLI::Range(1, 4096));
  app.add_option("--partition", o.partition, "layers per stage, e.g. 3,5,4 (default balanced)");
  app.add_option("--boundary", boundary, "stage boundary tensor: packed or summed")
      ->check(CLI::IsMember({"packed", "summed"}));
  auto* toks = app.add_option_group("input", "token ids");
  toks->add_option("--tokens", o.tokens, "one sequence, e.g. 1,2,3,4");
  toks->add_option("--tokens-file", o.tokens_file, "one sequence per line");
  toks->add_option("--data", o.data,
                   "selective-copy, induction, text:FILE, tokens:FILE.bin, an indexed dataset PREFIX or a mixture "
                   "P1=0.7,P2=0.3: loss on its held-out samples (with --ckpt and no input: the checkpoint's own data)");
  toks->require_option(0, 1);
  app.add_option("--samples", o.samples, "with --data: number of samples");
  app.add_flag("--all", o.all, "with --data: every sample of the (bounded) held-out set once");
  app.add_option("--batch-size", o.batch_size, "samples per forward pass (memory is bounded by one batch)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  app.add_option("--first-sample", o.first_sample,
                 "with --data: evaluate training samples from this global index instead of the held-out set")
      ->default_str("none: the held-out set");
  app.add_option("--eod-token", o.data_options.eod_token, "with an indexed dataset: token put after each document")
      ->default_str("the checkpoint's, else none");
  app.add_option("--eval-fraction", o.data_options.eval_fraction,
                 "with a file or indexed dataset: the held-out share")
      ->default_str("the checkpoint's split, else none");
  app.add_option("--eval-data", o.data_options.eval_data, "evaluate on all of this source (any --data form) instead");
  pmamba::tools::add_u64_option(app, "--data-seed", o.data_options.seed, "with --data: data seed")->default_str("the checkpoint's, else 0");
  app.add_option("--seq-len", o.data_options.seq_len, "with --data: sequence length (induction, text, tokens, indexed)")
      ->default_str("the checkpoint's, else the source's");
  app.add_option("--copy-tokens", o.data_options.copy_tokens, "with --data selective-copy")
      ->default_str("the checkpoint's, else 8");
  app.add_option("--copy-slots", o.data_options.copy_slots, "with --data selective-copy")
      ->default_str("the checkpoint's, else 32");
  app.add_option("--task-vocab", o.data_options.task_vocab, "with --data selective-copy / induction")
      ->default_str("the checkpoint's, else 16");
  app.add_option("--logits-out", o.logits_out,
                 "write logits to this file: HDF5 (dataset /logits), or safetensors (logits, input_ids) when it ends in .safetensors");
  app.add_option("--device", o.device, "cpu, cuda (the local rank's GPU), cuda:N, or auto (CUDA when available)");
  app.add_option("--backend", o.backend, "c10d backend between stages: gloo, nccl, or auto (NCCL on CUDA)")
      ->check(CLI::IsMember({"auto", "gloo", "nccl"}));
  app.add_flag("--json", o.json, "print the result (and the effective settings) as one JSON object");
  app.add_option("--threads", o.threads, "intra-op threads (0 = LibTorch default)");
  app.add_flag("--inproc", o.inproc, "chain the stages in this process (default: one process per stage)");
  app.add_option("--timeout", o.timeout_s, "seconds to wait for another stage");
  return pmamba::tools::run_tool(app, argc, argv, [&] {
    o.boundary = pmamba::model::parse_boundary(boundary);
    o.given = pmamba::tools::given_options(app);
    return pmamba::pp::eval_main(o, argc, argv);
  });
}
