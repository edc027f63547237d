// pmamba-ckpt verify: every check a checkpoint can be put through without a model — digests of
// every dataset, completeness (each FQN of the config exactly once, no unknown datasets,
// optimizer state for every parameter), shapes and dtypes against the config, tied copies
// equal, and optionally NaN/Inf. Problems are collected, not thrown, so one run reports all.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "src/ckpt/manifest.h"

namespace pmamba::ckpt {

struct VerifyOptions {
  bool finite = false;  // also count NaN/Inf in floating tensors
  int threads = 0;
};

struct VerifyReport {
  std::string dir;
  std::string note;  // how the checkpoint was found, when `latest` did not name it
  int64_t step = -1;
  int64_t format_version = 0;
  std::string run_id;
  std::vector<std::string> problems;
  int64_t datasets = 0;  // datasets read and hashed
  int64_t bytes = 0;     // decoded bytes hashed
  bool ok() const { return problems.empty(); }
};

/// Throws FormatError only when `path` is not a committed checkpoint at all (exit code 2);
/// everything else found wrong is a problem in the report (exit code 1).
VerifyReport verify_checkpoint(const std::string& path, const VerifyOptions& options);

/// The shard-level checks (check.h, collecting) and a digest check of every dataset, against an
/// already parsed manifest (also used on a reshard's output before it is committed).
void verify_contents(const std::string& dir, const Manifest& manifest, const VerifyOptions& options,
                     VerifyReport& report);

void print_verify(const VerifyReport& report, std::ostream& out, bool json);

}  // namespace pmamba::ckpt
