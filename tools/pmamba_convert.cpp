// pmamba-convert: bring Hugging Face / mamba_ssm weights in as a pmamba checkpoint, or take a
// checkpoint out as safetensors that transformers (or mamba_ssm) loads.
#include <cstdio>

#include "src/interop/convert.h"
#include "src/model/config.h"
#include "tools/progress.h"
#include "tools/tool_main.h"

int main(int argc, char** argv) {
  CLI::App app{"Convert between Hugging Face / mamba_ssm model folders (safetensors) and pmamba checkpoints, one tensor "
               "at a time.",
               "pmamba-convert"};
  app.require_subcommand(1);
  app.footer(
      "Examples:\n"
      "  pmamba-convert import hf/ ckpt --pp 2                # MambaForCausalLM, Mamba2ForCausalLM, BambaForCausalLM or mamba_ssm\n"
      "  pmamba-convert export ckpt out --format hf           # config.json + model.safetensors (sharded past 5GB)\n"
      "  pmamba-convert export ckpt out --format mamba_ssm --dtype bfloat16 --max-shard-size 2GB\n"
      "Exit codes: 0 ok, 2 bad arguments, an unsupported or invalid source, 3 internal error.");
  pmamba::interop::ImportOptions im;
  pmamba::interop::ExportOptions ex;
  std::string max_shard = "5GB";
  bool quiet = false;
  auto* imp = app.add_subcommand("import", "a model folder -> a committed weights-only pmamba checkpoint at step 0");
  imp->add_option("src", im.src, "model folder: config.json + model.safetensors (or model.safetensors.index.json and shards)")
      ->required();
  imp->add_option("out", im.out, "checkpoint root to create (new or empty)")->required();
  imp->add_option("--pp", im.pp, "pipeline stages (shards) of the checkpoint")->check(CLI::Range(1, 4096));
  imp->add_option("--partition", im.partition, "layers per stage, e.g. 3,5,4 (default balanced)");
  imp->add_option("--compression", im.compression, "none, zstd or zstd:LEVEL (default zstd:1)");
  imp->add_option("--dtype", im.dtype, "keep (the source's), float32 or bfloat16")
      ->check(CLI::IsMember({"keep", "float32", "bfloat16"}));
  imp->add_option("--threads", im.threads, "compression threads (0 = all cores)");
  imp->add_flag("--quiet", quiet, "print nothing on success");
  auto* exp = app.add_subcommand("export", "a pmamba checkpoint -> safetensors + config.json");
  exp->add_option("ckpt", ex.ckpt, "checkpoint root or step directory")->required();
  exp->add_option("out", ex.out, "folder to create (new or empty)")->required();
  exp->add_option("--format", ex.format, "hf (transformers' names and config) or mamba_ssm")
      ->check(CLI::IsMember({"hf", "mamba_ssm"}));
  exp->add_option("--dtype", ex.dtype, "keep (the checkpoint's), float32 or bfloat16")
      ->check(CLI::IsMember({"keep", "float32", "bfloat16"}));
  exp->add_option("--max-shard-size", max_shard, "most tensor bytes per file, e.g. 5GB (default), 500MB, 20KB");
  exp->add_flag("--quiet", quiet, "print nothing on success");
  return pmamba::tools::run_tool(app, argc, argv, [&]() -> int {
    pmamba::tools::ProgressBar bar(imp->parsed() ? "import" : "export", !quiet);
    if (imp->parsed()) {
      im.progress = [&](int64_t done, int64_t total) { bar.update(done, total); };
      const auto r = pmamba::interop::import_model(im);
      bar.finish();
      for (const auto& note : r.notes) std::fprintf(stderr, "pmamba-convert: note: %s\n", note.c_str());
      if (!quiet) {
        std::printf("imported %s (%s): %lld tensors, %lld bytes -> %s\n", pmamba::interop::architecture_name(r.architecture),
                    pmamba::model::describe(r.config).c_str(), static_cast<long long>(r.tensors),
                    static_cast<long long>(r.source_bytes), r.out_dir.c_str());
      }
      return 0;
    }
    ex.max_shard_bytes = pmamba::interop::parse_size(max_shard);
    ex.progress = [&](int64_t done, int64_t total) { bar.update(done, total); };
    const auto r = pmamba::interop::export_model(ex);
    bar.finish();
    if (!quiet) {
      std::printf("exported %s: %lld tensors, %lld bytes in %zu file%s -> %s\n", pmamba::interop::architecture_name(r.architecture),
                  static_cast<long long>(r.tensors), static_cast<long long>(r.bytes), r.files.size(),
                  r.files.size() == 1 ? "" : "s", r.out.c_str());
    }
    return 0;
  });
}
