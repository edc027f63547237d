// One stage's HDF5 shard: writing it (compression in a thread pool, chunks written with
// H5Dwrite_chunk), scanning what it holds, and reading datasets back (chunks decoded in a
// thread pool). See docs/FORMAT.md for the layout.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "src/ckpt/codec.h"
#include "src/ckpt/format.h"
#include "src/ckpt/h5.h"

namespace pmamba::ckpt {

class ThreadPool;

/// Root attributes of a shard.
struct ShardHeader {
  int stage = 0;
  int num_stages = 1;
  int64_t layer_begin = 0;
  int64_t layer_end = 0;
  int64_t step = 0;
  int part = 0;    // this file's index among its stage's files (version 3; 0 before)
  int parts = 1;   // how many files the stage is spread over
  std::string config_json;  // the model config, compact JSON
  std::string train_json;   // training state, compact JSON or "{}"
  std::string compression;  // read side only: the root attribute ("" when absent)
};

struct TensorToSave {
  std::string fqn;
  Slot slot = Slot::kParam;
  at::Tensor tensor;  // CPU; any layout (made contiguous while writing)
};

/// A tied parameter stored once elsewhere: `fqn` (e.g. lm_head.weight) is `alias_of`
/// (backbone.embedding.weight). The digests are those of this stage's own copies, so readers
/// can check that the tie held when the checkpoint was written.
struct AliasToSave {
  std::string fqn;
  std::string alias_of;
  std::string target_file;  // shard holding alias_of; "" when it is this shard
  std::map<Slot, uint64_t> digests;
};

/// Where a save's time went, in seconds, summed over every shard and dataset written while it
/// was given (WriteOptions::profile, SaveOptions::profile). Measurement only: the files written
/// are the same with or without it.
struct SaveProfile {
  double open_s = 0;      // creating the file, its root attributes, the thread pool
  double metadata_s = 0;  // per-dataset HDF5 objects: H5Dcreate (groups, layout) and attributes
  double data_s = 0;      // tensor bytes into the file (zstd: including compression waited for)
  double digest_s = 0;    // waiting for a dataset's digest after its bytes were written
  double close_s = 0;     // H5Fclose: HDF5 writes out its metadata
  double fsync_s = 0;     // fsync of the shard
  double rename_s = 0;    // rename of the shard and fsync of its directory
  double produce_s = 0;   // save_checkpoint: the caller's produce() (collecting the tensors)
  double manifest_s = 0;  // building and checking the manifest
  double commit_s = 0;    // writing the manifest, renames and fsyncs, latest, pruning
  int64_t datasets = 0;
  int64_t shards = 0;
  int64_t direct_bytes = 0;  // tensor bytes written with O_DIRECT (uncompressed shards, where allowed)
  int64_t bounce_bytes = 0;  // of those, bytes copied first into an aligned buffer (the tensor's own memory was not 4096-aligned)
};

struct WriteOptions {
  Compression compression;
  int threads = 0;                     // 0 = hardware concurrency
  size_t chunk_bytes = size_t{4} << 20;  // target uncompressed chunk size
  SaveProfile* profile = nullptr;      // when set, phase times are added to it
};

/// What a writer put into one shard, as it wrote it: the same fields a scan of the finished
/// file finds (ShardReader::scan), so a manifest can be built without reopening the file.
struct WrittenShard {
  std::string path;   // final path
  std::string file;   // file name in its directory
  int64_t bytes = 0;  // size of the file as fsynced
  ShardHeader header;
  std::vector<StoredDataset> datasets;  // sorted by path, as scan() returns them
  std::vector<AliasToSave> aliases;
};

class ShardReader;

/// Writes one shard incrementally: <dir>/<shard name>.tmp is created at construction, each
/// add()/copy() writes one dataset (so memory stays bounded by one tensor), finish() closes,
/// fsyncs and renames it into place. Destroying an unfinished writer removes the temporary
/// file. Throws IoError/UsageError.
class ShardWriter {
 public:
  ShardWriter(const std::string& dir, const ShardHeader& header, const WriteOptions& options);
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  void add(const TensorToSave& tensor);
  /// add() for each in order; with zstd the next tensors' chunks compress while earlier ones are
  /// written, so a shard written in one call keeps the pool busy across dataset boundaries.
  void add_all(const std::vector<TensorToSave>& tensors);
  /// Copies a dataset from another shard as stored (its bytes are not decoded); its attributes
  /// are written anew from `dataset` in this format version's encoding.
  void copy(const ShardReader& src, const StoredDataset& dataset);
  void add_alias(const AliasToSave& alias);
  /// Returns the final path.
  std::string finish();
  /// After finish(): what was written (the digests are those of the bytes handed to HDF5, the
  /// sizes HDF5's own for each dataset and the file's as fsynced).
  const WrittenShard& written() const;

 private:
  void added();
  void abandon() noexcept;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Writes <dir>/<shard name> in one call (ShardWriter). Returns the final path; with `written`,
/// also what was written (ShardWriter::written).
std::string write_shard(const std::string& dir, const ShardHeader& header,
                        const std::vector<TensorToSave>& tensors,
                        const std::vector<AliasToSave>& aliases, const WriteOptions& options);
std::string write_shard(const std::string& dir, const ShardHeader& header,
                        const std::vector<TensorToSave>& tensors,
                        const std::vector<AliasToSave>& aliases, const WriteOptions& options,
                        WrittenShard* written);

/// Read side of a shard. Opening checks the format name and version and parses the header;
/// in a version-1 shard every global-heap collection is checked first (heap_check.h), and in
/// a version-2 shard variable-length strings are refused unread.
class ShardReader {
 public:
  explicit ShardReader(const std::string& path);
  ~ShardReader();
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;
  const std::string& path() const { return path_; }
  const ShardHeader& header() const { return header_; }
  int64_t format_version() const { return format_version_; }

  /// Every dataset under /model and /optim (links are not followed), sorted by path.
  /// Throws FormatError for datasets whose names, types, attributes or storage do not fit the
  /// format (an uncompressed dataset whose bytes would lie beyond the end of the file, say).
  std::vector<StoredDataset> scan() const;
  /// Alias records (root attribute "aliases").
  std::vector<AliasToSave> aliases() const;

  /// Reads `info`'s dataset into `dest` (contiguous, matching shape and dtype), decoding zstd
  /// chunks in `pool` when given. Does not check the digest. Throws FormatError/IoError
  /// naming the file and dataset.
  void read(const StoredDataset& info, at::Tensor& dest, ThreadPool* pool) const;

  /// Raw handle (reshard copies objects between files).
  hid_t file() const { return file_.get(); }

 private:
  int posix_fd() const;
  void read_direct(int64_t offset, uint8_t* dest, size_t bytes, ThreadPool& pool, const std::string& where) const;

  std::string path_;
  int64_t file_size_ = 0;
  mutable int fd_ = -1;  // plain descriptor for parallel pread of raw data
  h5::Handle file_;
  ShardHeader header_;
  int64_t format_version_ = 0;
  bool variable_strings_ = false;  // version 1: string attributes are variable-length
};

/// (fqn, slot) for a dataset path, or false when the path is not a checkpoint dataset.
bool parse_dataset_path(const std::string& path, std::string& fqn, Slot& slot);

}  // namespace pmamba::ckpt
