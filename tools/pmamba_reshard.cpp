// pmamba-reshard: re-split a checkpoint to any pipeline layout (or merge it into one shard).
#include <cstdio>

#include "src/ckpt/reshard.h"
#include "tools/progress.h"
#include "tools/tool_main.h"

int main(int argc, char** argv) {
  CLI::App app{"Re-split a pmamba checkpoint to another pipeline layout, offline. Parameters, optimizer "
               "state, training state and tie aliases move under their unchanged FQNs; with the "
               "compression kept, stored chunks are copied without decoding.",
               "pmamba-reshard"};
  app.footer(
      "Examples:\n"
      "  pmamba-reshard ckpt merged --pp 1\n"
      "  pmamba-reshard ckpt/step-00001000 split --pp 3 --partition 1,2,1 --compression zstd:3\n"
      "IN is a checkpoint root (its latest is used) or a step directory; it is never modified. OUT may not be,\n"
      "contain or lie inside IN, nor lie inside another checkpoint; it keeps IN's run id.\n"
      "Exit codes: 0 ok, 1 the input or output does not verify, 2 bad arguments or unreadable input, 3 internal error.");
  pmamba::ckpt::ReshardOptions o;
  bool quiet = false;
  app.add_option("in", o.in, "input checkpoint")->required();
  app.add_option("out", o.out, "output checkpoint root")->required();
  app.add_option("--pp", o.pp, "number of output stages (1 merges into one shard)")->required()->check(CLI::Range(1, 4096));
  app.add_option("--partition", o.partition, "layers per stage, e.g. 3,5,4 (default balanced)");
  app.add_option("--files-per-stage", o.files_per_stage,
                 "spread each stage's tensors over K files (as K data-parallel writers do; default 1)")
      ->check(CLI::Range(1, 4096));
  app.add_option("--compression", o.compression, "keep (default), none, zstd or zstd:LEVEL");
  app.add_flag("--verify,!--no-verify", o.verify,
               "check every input digest while copying and the output before committing (the default; --no-verify skips it)");
  app.add_flag("--force", o.force, "write into an existing, non-empty output root of the same run");
  app.add_flag("--quiet", quiet, "no progress bar");
  app.add_option("--threads", o.threads, "compression threads (0 = all cores)");
  return pmamba::tools::run_tool(app, argc, argv, [&]() -> int {
    pmamba::tools::ProgressBar bar("reshard", !quiet);
    o.progress = [&](int64_t done, int64_t total) { bar.update(done, total); };
    try {
      const auto r = pmamba::ckpt::reshard(o);
      bar.finish();
      if (!quiet) {
        std::printf("committed %s: %zu stages, %lld datasets copied as stored, %lld re-encoded%s\n", r.out_dir.c_str(),
                    r.manifest.stages.size(), static_cast<long long>(r.copied), static_cast<long long>(r.reencoded),
                    o.verify ? ", every digest verified" : "");
      }
      if (!r.note.empty()) std::fprintf(stderr, "pmamba-reshard: committed, but `latest` was not updated: %s\n", r.note.c_str());
    } catch (const pmamba::ckpt::IntegrityError& e) {
      bar.finish();
      std::fprintf(stderr, "pmamba-reshard: %s\n", pmamba::tools::first_line(e.what()).c_str());
      return 1;
    }
    return 0;
  });
}
