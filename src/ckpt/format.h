// Constants and naming rules of the pmamba checkpoint format (docs/FORMAT.md is the
// normative spec; this header must agree with it).
//
//   <root>/step-00000100/manifest.json          written last: the commit marker and the index
//   <root>/step-00000100/stage-00-of-04.h5 ...  one HDF5 shard per stage
//   <root>/latest                               names the newest committed step directory
//
// In a shard, FQN "backbone.layers.7.mixer.A_log" lives at /model/backbone/layers/7/mixer/A_log,
// its AdamW state at /optim/backbone/layers/7/mixer/A_log/{exp_avg,exp_avg_sq,step}.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace pmamba::ckpt {

inline constexpr const char* kFormatName = "pmamba-ckpt";
// Version 2: string attributes are fixed-length (they live in the checksummed object header,
// not in HDF5's unchecksummed global heap); the manifest carries the run id and a digest of
// its training state. Version 3: a stage's tensors may be spread over several files (one per
// writing data-parallel rank): shards carry `part` and `num_parts`, the manifest lists each
// stage's files. Versions 1 and 2 are still read.
inline constexpr int64_t kFormatVersion = 3;
/// Most files one stage may be spread over.
inline constexpr int kMaxFilesPerStage = 4096;
inline constexpr const char* kManifestName = "manifest.json";
inline constexpr const char* kLatestName = "latest";
inline constexpr uint32_t kZstdFilterId = 32015;  // registered HDF5 id (hdf5plugin's Zstd)

/// Optimizer-state slots stored per parameter.
enum class Slot { kParam, kExpAvg, kExpAvgSq, kStep };
const char* slot_name(Slot slot);  // "param", "exp_avg", "exp_avg_sq", "step"

/// One stored dataset of a checkpoint: where it lives and what it holds. The manifest lists one
/// per (FQN, slot); scanning a shard finds one per HDF5 dataset; the checker (check.h) compares
/// the two, so both sides describe a dataset with the same fields.
struct StoredDataset {
  std::string path;          // HDF5 path inside the shard: "/model/backbone/embedding/weight"
  std::string fqn;           // "backbone.embedding.weight"
  Slot slot = Slot::kParam;
  std::vector<int64_t> shape;
  std::string dtype;         // logical dtype
  uint64_t digest = 0;       // xxh3-64 of the decoded bytes
  int64_t stored_bytes = 0;  // bytes on disk
  int64_t raw_bytes = 0;     // element count x dtype size
  bool compressed = false;   // zstd filter present (known from a shard scan; not in the manifest)
};

/// "step-00000100"
std::string step_dir_name(int64_t step);
/// Parses "step-00000100" -> 100; -1 for anything else (temp names included).
int64_t parse_step_dir_name(const std::string& name);
/// "stage-00-of-04.h5" (one file per stage), "stage-00-of-04.part-1-of-2.h5" (part 1 of 2).
std::string shard_file_name(int stage, int num_stages, int part = 0, int parts = 1);

/// HDF5 path of a slot of an FQN: ("a.b.c", kParam) -> "/model/a/b/c",
/// ("a.b.c", kExpAvg) -> "/optim/a/b/c/exp_avg".
std::string dataset_path(const std::string& fqn, Slot slot);

/// Logical dtype names stored in the `dtype` attribute and the manifest.
std::string dtype_name(at::ScalarType t);  // throws UsageError for unsupported types
at::ScalarType dtype_from_name(const std::string& name);  // throws FormatError
size_t dtype_size(at::ScalarType t);

/// Element count of `shape`, refusing negative dimensions and counts beyond 2^50 (no tensor
/// pmamba stores comes near) before anything is sized from them. `what` names the tensor.
int64_t checked_numel(const std::vector<int64_t>& shape, const std::string& what);

/// A fresh random 128-bit run id, 32 lowercase hex digits.
std::string new_run_id();
bool is_run_id(const std::string& s);

/// xxh3-64 of the tensor's contiguous little-endian bytes.
uint64_t tensor_digest(const at::Tensor& t);
uint64_t bytes_digest(const void* data, size_t n);
std::string digest_hex(uint64_t digest);  // 16 lowercase hex digits
uint64_t parse_digest_hex(const std::string& hex);  // throws FormatError

}  // namespace pmamba::ckpt
