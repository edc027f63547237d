// Offline re-split of a checkpoint to another pipeline layout: parameters, optimizer state,
// training state and tie aliases move between shards under their unchanged FQNs. With the
// compression kept, datasets are copied as stored (H5Ocopy: compressed chunks are never
// decoded); otherwise each tensor is decoded and re-encoded in the thread pool. Memory stays
// bounded by about one tensor.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "src/ckpt/manifest.h"

namespace pmamba::ckpt {

struct ReshardOptions {
  std::string in;   // checkpoint root (its latest) or step directory; never modified
  std::string out;  // output root; refused when it exists and is not empty, unless force
  int pp = 1;
  std::string partition;          // "" = balanced
  int files_per_stage = 1;        // spread each stage over this many files (as K writers would)
  std::string compression = "keep";  // keep | none | zstd | zstd:LEVEL
  bool verify = true;             // check every input digest while copying and the output after
  bool force = false;             // write into a non-empty output root (of the same run)
  int threads = 0;
  /// Called after each dataset with (bytes done, bytes total) of decoded data.
  std::function<void(int64_t, int64_t)> progress;
};

struct ReshardResult {
  std::string out_dir;   // the committed step directory
  std::string note;      // "" or why `latest` could not be updated
  Manifest manifest;
  int64_t copied = 0;    // datasets copied as stored
  int64_t reencoded = 0; // datasets decoded and encoded again
};

/// Throws UsageError (impossible layout, existing output, an output that is, contains or lies
/// inside the input) and LockedError (another writer holds the output's lock) before writing
/// anything, FormatError/IntegrityError for a bad input, IoError for write failures. A failure
/// never leaves a committed output: the output root is removed when this call created it, and
/// left empty (but for its lock file) otherwise, so the same command can simply be run again.
/// The output keeps the input's run id.
ReshardResult reshard(const ReshardOptions& options);

}  // namespace pmamba::ckpt
