// pmamba-train: train a Mamba LM with pipeline parallelism, or resume at any PP degree.
#include "src/pp/signals.h"
#include "src/pp/train.h"
#include "tools/tool_main.h"
#include "tools/version.h"

int main(int argc, char** argv) {
  pmamba::tools::prepare_compute_process(argv);  // first: it may restart the program
  // Before any other thread exists: the stop signals are taken by one thread of their own.
  pmamba::pp::install_stop_signals("pmamba-train");
  CLI::App app{"Train a Mamba LM with pipeline parallelism over c10d (Gloo on CPU, NCCL on CUDA). Without launcher "
               "variables, --pp N starts N local processes; under torchrun/Slurm/mpirun each process is "
               "one rank (stage rank / dp, DP index rank % dp).",
               "pmamba-train"};
  app.footer(
      "Examples:\n"
      "  pmamba-train --preset tiny --data selective-copy --pp 2 --schedule 1f1b --microbatches 4 \\\n"
      "               --steps 30 --ckpt-every 10 --ckpt-dir run\n"
      "  pmamba-train --pp 3 --resume run --ckpt-dir run --steps 30        # resume at another PP degree\n"
      "  pmamba-train --preset tiny --pp 2 --dp 2 --zero 1 --microbatches 8 --ckpt-dir run2  # 4 ranks, bitwise = pp 1\n"
      "  torchrun --redirects 2 --tee 2 --no_python --nproc_per_node 4 build/bin/pmamba-train --pp 4 \\\n"
      "           --preset small --data text:book.txt\n"
      "           (torch 1.13's torchrun needs these spellings and --redirects/--tee; 2.x also takes --no-python\n"
      "           --nproc-per-node. With a CUDA LibTorch: stage k on GPU LOCAL_RANK, activations over NCCL)\n"
      "SIGTERM, SIGINT or SIGUSR1 stop the run after the step in progress, commit it and exit 0; a second one exits 1 at once.\n"
      "Exit codes: 0 ok (or stopped by a signal), 1 a stage failed or stopped answering, 2 bad arguments, unreadable input\n"
      "or a checkpoint that cannot be written, 3 internal error.");
  pmamba::pp::TrainOptions o;
  std::string data = "selective-copy";
  auto* model = app.add_option_group("model");
  model->add_option("--preset", o.preset, "model preset (tiny, small, mamba-130m, ...)");
  model->add_option("--config", o.config_path, "model config JSON file");
  model->require_option(0, 1);
  pmamba::tools::add_u64_option(app, "--seed", o.seed, "initialisation and data seed");
  app.add_option("--boundary", o.boundary, "stage boundary: packed or summed")->check(CLI::IsMember({"packed", "summed"}));
  app.add_option("--pp", o.pp, "pipeline stages (processes)")->check(CLI::Range(1, 4096));
  app.add_option("--partition", o.partition, "layers per stage, e.g. 3,5,4 (default balanced)");
  app.add_option("--schedule", o.schedule, "gpipe or 1f1b")->check(CLI::IsMember({"gpipe", "1f1b"}));
  app.add_option("--dp", o.dp, "data-parallel replicas of the pipeline (world = pp x dp)")->check(CLI::Range(1, 4096));
  app.add_option("--zero", o.zero, "1: shard the AdamW state over the DP ranks of each stage (ZeRO-1)")
      ->check(CLI::IsMember({0, 1}));
  app.add_option("--grad-reduce", o.grad_reduce,
                 "tree: one fixed summation tree over the global microbatches (bitwise the same at every --dp); "
                 "allreduce: the backend's all-reduce (faster on NCCL, not bitwise across --dp)")
      ->check(CLI::IsMember({"tree", "allreduce"}));
  app.add_option("--microbatches", o.microbatches, "microbatches per step, all DP replicas together")->check(CLI::Range(1, 1 << 20));
  app.add_option("--microbatch-size", o.microbatch_size, "samples per microbatch")->check(CLI::Range(1, 1 << 20));
  app.add_option("--data", data,
                 "selective-copy, induction, text:FILE, tokens:FILE.bin, a file, an indexed dataset PREFIX (PREFIX.idx + "
                 "PREFIX.bin, Megatron-LM's format; docs/DATA.md) or a mixture P1=0.7,P2=0.3");
  app.add_option("--eod-token", o.data.eod_token, "indexed data: token put after each packed document")->default_str("none");
  app.add_option("--eval-fraction", o.data.eval_fraction,
                 "hold out this share of the documents (of a text/tokens file: its end) that training never sees");
  app.add_option("--eval-data", o.data.eval_data, "or hold out this whole source (any --data form)");
  app.add_option("--eval-every", o.eval_every, "validate on the held-out set every K steps (0: never)");
  app.add_option("--eval-samples", o.eval_samples, "held-out samples per validation");
  app.add_option("--seq-len", o.data.seq_len, "sequence length (induction, text, tokens, indexed)")
      ->default_str("the source's: 64 induction, 128 files");
  app.add_option("--copy-tokens", o.data.copy_tokens, "selective-copy: tokens to memorise");
  app.add_option("--copy-slots", o.data.copy_slots, "selective-copy: noise + data slots");
  app.add_option("--task-vocab", o.data.task_vocab, "selective-copy / induction vocabulary");
  app.add_option("--steps", o.steps, "length of the LR schedule (the run ends there)")->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  app.add_option("--stop-after", o.stop_after, "end the run after this step (as a preempted job would)");
  app.add_option("--lr", o.lr, "peak learning rate");
  app.add_option("--min-lr", o.min_lr, "final learning rate of the cosine decay");
  app.add_option("--warmup", o.warmup, "linear warmup steps");
  app.add_option("--clip", o.clip, "clip the global grad norm (0 = off)");
  app.add_option("--weight-decay", o.adamw.weight_decay, "AdamW decoupled weight decay (not on A_log, D, norms, biases)");
  app.add_option("--beta1", o.adamw.beta1);
  app.add_option("--beta2", o.adamw.beta2);
  app.add_option("--ckpt-dir", o.ckpt_dir, "checkpoint root");
  app.add_option("--ckpt-every", o.ckpt_every, "checkpoint every K steps (and at the end)");
  app.add_option("--keep-last", o.keep_last, "keep only the newest K checkpoints");
  app.add_option("--resume", o.resume, "auto (newest in --ckpt-dir, if any) or a checkpoint path (then --ckpt-dir defaults to its root)");
  app.add_option("--init-from", o.init_from,
                 "start a new run (step 0, fresh optimizer and LR schedule, its own run id) from this checkpoint's "
                 "weights, at any --pp (e.g. one written by pmamba-convert import)");
  app.add_flag("--overwrite", o.overwrite, "a new run may replace the checkpoints of another run in --ckpt-dir (deleted after its first commit)");
  app.add_option("--compression", o.compression, "checkpoint compression: none, zstd or zstd:LEVEL");
  app.add_flag("--async-ckpt", o.async_ckpt,
               "asynchronous checkpoints: copy the state to host buffers at the checkpoint step and keep training while "
               "a background thread writes it; committed at a later step (at most one in flight; the end of the run "
               "and a stop signal wait for it)");
  app.add_option("--ckpt-priority", o.ckpt_priority,
                 "priority of the --async-ckpt background threads: idle (default: they use only the CPU training "
                 "leaves, so on busy cores the save takes longer, not the steps) or normal (they compete with "
                 "training, so a save finishes on a machine shared with other jobs)")
      ->check(CLI::IsMember({"idle", "normal"}));
  app.add_option("--device", o.device, "cpu, cuda (the local rank's GPU), cuda:N, or auto (CUDA when available)");
  app.add_option("--backend", o.backend, "c10d backend between stages: gloo, nccl, or auto (NCCL on CUDA)")
      ->check(CLI::IsMember({"auto", "gloo", "nccl"}));
  app.add_option("--autocast", o.autocast, "none, or bf16: forward matmuls in bfloat16 (weights, optimizer, loss in float32)")
      ->check(CLI::IsMember({"none", "bf16"}));
  app.add_option("--threads", o.threads, "intra-op threads per stage (0 = LibTorch default)");
  app.add_option("--timeout", o.timeout_s, "seconds to wait for another stage before failing");
  app.add_option("--metrics", o.metrics_path, "write JSON lines of per-step metrics here (default: CKPT_DIR/metrics.jsonl)");
  app.add_option("--log-every", o.log_every, "a console line every N steps (the metrics file gets every step)");
  app.add_flag("--print-schedule", o.print_schedule, "print the per-stage action lists");
  app.add_flag("--quiet", o.quiet, "no per-step console lines");
  return pmamba::tools::run_tool(app, argc, argv, [&]() -> int {
    o.data.source = pmamba::pp::resolve_source(data);
    o.version = pmamba::tools::pmamba_version();
    o.data.seed = o.seed;
    o.given = pmamba::tools::given_options(app);
    return pmamba::pp::run_train(o, argc, argv);
  });
}
