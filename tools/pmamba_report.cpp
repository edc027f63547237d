// pmamba-report: one self-contained HTML page about a training run directory (metrics plots and
// the checkpoints, each verified).
#include <cstdio>

#include "src/report/report.h"
#include "tools/tool_main.h"

int main(int argc, char** argv) {
  CLI::App app{"Write one self-contained HTML report (inline SVG plots, no script, nothing fetched) for a "
               "training run directory: the run(s) and model, loss / eval loss, accuracy, lr, grad_norm, "
               "tokens_per_s and bubble against step, and a table of the committed checkpoints, each verified.",
               "pmamba-report"};
  app.footer(
      "Examples:\n"
      "  pmamba-train --preset tiny --data selective-copy --steps 100 --ckpt-every 20 --ckpt-dir run --metrics run/metrics.jsonl\n"
      "  pmamba-report run                      # writes run/report.html\n"
      "  pmamba-report run -o /tmp/run.html --metrics elsewhere/metrics.jsonl --no-verify\n"
      "RUN_DIR is a checkpoint root (pmamba-train --ckpt-dir). The metrics file is --metrics, else the one the\n"
      "newest checkpoint's training state names, else RUN_DIR/metrics.jsonl. For each step the last line wins\n"
      "(a resumed run may log steps again); a truncated last line is skipped with a warning.\n"
      "Exit codes: 0 written, 2 bad arguments or unreadable input (a malformed metrics line), 3 internal error.");
  pmamba::report::ReportOptions o;
  bool quiet = false;
  app.add_option("run_dir", o.run_dir, "the run's checkpoint root")->required();
  app.add_option("-o,--out", o.out, "the HTML file to write (default RUN_DIR/report.html)");
  app.add_option("--metrics", o.metrics, "the metrics JSON-lines file (default: see below)");
  app.add_flag("--verify,!--no-verify", o.verify,
               "verify every checkpoint as pmamba-ckpt verify does (the default; --no-verify skips it)");
  app.add_option("--threads", o.threads, "verification threads (0 = all cores)")->check(CLI::Range(0, 4096));
  app.add_flag("--quiet", quiet, "print nothing but errors");
  return pmamba::tools::run_tool(app, argc, argv, [&]() -> int {
    const auto r = pmamba::report::write_report(o);
    for (const auto* list : {&r.data.warnings, &r.data.metrics.warnings}) {
      for (const auto& w : *list) std::fprintf(stderr, "pmamba-report: warning: %s\n", w.c_str());
    }
    if (!quiet) {
      size_t bad = 0;
      for (const auto& c : r.data.checkpoints) bad += c.verified && !c.ok;
      std::printf("wrote %s: %zu steps, %zu plots, %zu checkpoints", r.out.c_str(), r.data.metrics.steps.size(), r.plots,
                  r.data.checkpoints.size());
      if (bad > 0) std::printf(" (%zu failed verification)", bad);
      std::printf("\n");
    }
    return 0;
  });
}
