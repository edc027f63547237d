// Megatron-LM indexed datasets: PREFIX.idx (the index) and PREFIX.bin (the tokens), as written by
// Megatron's tools/preprocess_data.py (docs/DATA.md gives the layout byte by byte and the
// version it was checked against). pmamba reads them as a list of documents; a document is the
// tokens of its sequences, which Megatron's writer lays out back to back in the .bin.
//
// The .bin is mapped, not read: a corpus may be far larger than memory. Every count, length and
// pointer in the .idx is checked against the file sizes before a token is read, so a truncated
// or foreign file is refused with what was expected, what was found and where.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace pmamba::pp {

class IndexedDataset {
 public:
  /// Opens PREFIX.idx and PREFIX.bin. Throws UsageError naming the file and what is wrong.
  explicit IndexedDataset(const std::string& prefix);
  ~IndexedDataset();
  IndexedDataset(const IndexedDataset&) = delete;
  IndexedDataset& operator=(const IndexedDataset&) = delete;

  const std::string& prefix() const { return prefix_; }
  int64_t documents() const { return static_cast<int64_t>(doc_begin_.size()) - 1; }
  int64_t document_length(int64_t d) const { return doc_begin_[d + 1] - doc_begin_[d]; }
  int64_t tokens() const { return doc_begin_.back(); }
  /// Copies tokens [offset, offset + count) of document d into out.
  void copy(int64_t d, int64_t offset, int64_t count, int64_t* out) const;
  /// The largest token id in the file (scanned once, at open).
  int64_t max_token() const { return max_token_; }
  /// "uint16", "int32" or "uint8".
  std::string dtype_name() const;
  /// {"idx": {"bytes", "xxh3_64"}, "bin": {"bytes", "xxh3_64"}}: the data's identity.
  nlohmann::ordered_json content() const;

 private:
  std::string prefix_;
  int dtype_code_ = 0;
  int item_size_ = 0;
  std::vector<int64_t> doc_begin_;  // token offset of each document, then the total
  const unsigned char* bin_ = nullptr;
  int64_t bin_bytes_ = 0;
  uint64_t idx_digest_ = 0, bin_digest_ = 0;
  int64_t idx_bytes_ = 0;
  int64_t max_token_ = -1;
};

/// True when PREFIX.idx exists (the form `--data PREFIX` names an indexed dataset by).
bool is_indexed_prefix(const std::string& prefix);

}  // namespace pmamba::pp
