#include "src/pp/corpus.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "src/ckpt/errors.h"
#include "src/ckpt/format.h"
#include "src/ckpt/fs.h"
#include "src/pp/errors.h"

namespace pmamba::pp {

namespace {

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr int64_t kHeaderBytes = 9 + 8 + 1 + 8 + 8;
constexpr int64_t kMaxIndexBytes = int64_t{16} << 30;

// Little-endian fields of the index, whatever this machine's byte order.
uint64_t u64_at(const std::string& b, int64_t at) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[static_cast<size_t>(at + i)]);
  return v;
}
int64_t i64_at(const std::string& b, int64_t at) { return static_cast<int64_t>(u64_at(b, at)); }
int32_t i32_at(const std::string& b, int64_t at) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[static_cast<size_t>(at + i)]);
  return static_cast<int32_t>(v);
}

int item_size_of(int code) {
  switch (code) {
    case 1: return 1;  // uint8
    case 4: return 4;  // int32
    case 8: return 2;  // uint16
    default: return 0;
  }
}

}  // namespace

bool is_indexed_prefix(const std::string& prefix) { return ckpt::fs::is_file(prefix + ".idx"); }

IndexedDataset::IndexedDataset(const std::string& prefix) : prefix_(prefix) {
  const std::string idx_path = prefix + ".idx", bin_path = prefix + ".bin";
  std::string idx;
  try {
    idx = ckpt::fs::read_file(idx_path, kMaxIndexBytes);
  } catch (const ckpt::Error& e) {
    throw UsageError("cannot use indexed dataset '" + prefix + "': " + e.what());
  }
  const auto bad = [&](const std::string& what) { return UsageError("indexed dataset index '" + idx_path + "': " + what); };
  idx_bytes_ = static_cast<int64_t>(idx.size());
  if (idx_bytes_ < kHeaderBytes) {
    throw bad("holds " + std::to_string(idx_bytes_) + " bytes, fewer than the " + std::to_string(kHeaderBytes) +
              "-byte header of a Megatron index");
  }
  if (std::memcmp(idx.data(), kMagic, 9) != 0) {
    throw bad("does not start with Megatron's magic \"MMIDIDX\\0\\0\" (not a Megatron-LM indexed dataset index)");
  }
  const uint64_t version = u64_at(idx, 9);
  if (version != 1) throw bad("has version " + std::to_string(version) + "; pmamba reads version 1");
  dtype_code_ = static_cast<unsigned char>(idx[17]);
  item_size_ = item_size_of(dtype_code_);
  if (item_size_ == 0) {
    throw bad("has token dtype code " + std::to_string(dtype_code_) +
              "; pmamba reads 1 (uint8), 4 (int32) and 8 (uint16) token ids");
  }
  const uint64_t sequences = u64_at(idx, 18), doc_entries = u64_at(idx, 26);
  // Each sequence takes 12 bytes of the index and each document entry 8: a count the file cannot
  // hold is refused before anything is allocated for it.
  const uint64_t room = static_cast<uint64_t>(idx_bytes_ - kHeaderBytes);
  if (sequences > room / 12 || doc_entries > room / 8 || sequences * 12 + doc_entries * 8 != room) {
    throw bad("its header counts " + std::to_string(sequences) + " sequences and " + std::to_string(doc_entries) +
              " document entries (" + std::to_string(kHeaderBytes) + " + 12 x sequences + 8 x entries bytes), but the file holds " +
              std::to_string(idx_bytes_) + " bytes (truncated, or a newer index with multimodal extras)");
  }
  if (doc_entries < 1) throw bad("has no document entries (Megatron writes at least the leading 0)");
  const int64_t S = static_cast<int64_t>(sequences), E = static_cast<int64_t>(doc_entries);
  const int64_t len_at = kHeaderBytes, ptr_at = len_at + 4 * S, doc_at = ptr_at + 8 * S;
  // Sequence starts in tokens; Megatron's writer puts sequence i right after sequence i - 1.
  std::vector<int64_t> seq_begin(static_cast<size_t>(S) + 1, 0);
  for (int64_t i = 0; i < S; ++i) {
    const int32_t len = i32_at(idx, len_at + 4 * i);
    const int64_t ptr = i64_at(idx, ptr_at + 8 * i);
    if (len < 0) throw bad("sequence " + std::to_string(i) + " has a negative length " + std::to_string(len));
    if (ptr != seq_begin[i] * item_size_) {
      throw bad("sequence " + std::to_string(i) + " starts at byte " + std::to_string(ptr) + " of the .bin, expected " +
                std::to_string(seq_begin[i] * item_size_) + " (the end of sequence " + std::to_string(i - 1) +
                "); pmamba reads sequences stored back to back");
    }
    seq_begin[i + 1] = seq_begin[i] + len;
  }
  doc_begin_.reserve(static_cast<size_t>(E));
  for (int64_t d = 0; d < E; ++d) {
    const int64_t s = i64_at(idx, doc_at + 8 * d);
    const int64_t prev = d == 0 ? 0 : i64_at(idx, doc_at + 8 * (d - 1));
    if (d == 0 && s != 0) throw bad("document entry 0 is " + std::to_string(s) + ", expected 0");
    if (s < prev || s > S) {
      throw bad("document entry " + std::to_string(d) + " is " + std::to_string(s) + ", expected a sequence index in [" +
                std::to_string(prev) + ", " + std::to_string(S) + "]");
    }
    doc_begin_.push_back(seq_begin[s]);
  }
  if (i64_at(idx, doc_at + 8 * (E - 1)) != S) {
    throw bad("the last document entry is " + std::to_string(i64_at(idx, doc_at + 8 * (E - 1))) +
              ", expected the sequence count " + std::to_string(S));
  }
  idx_digest_ = ckpt::bytes_digest(idx.data(), idx.size());
  idx = std::string();

  int64_t bin_size = 0;
  int fd = -1;
  try {
    fd = ckpt::fs::open_regular(bin_path, int64_t{1} << 50, &bin_size);
  } catch (const ckpt::Error& e) {
    throw UsageError("cannot use indexed dataset '" + prefix + "': " + e.what());
  }
  const int64_t want = seq_begin.back() * item_size_;
  if (bin_size != want) {
    ::close(fd);
    throw UsageError("indexed dataset tokens '" + bin_path + "' hold " + std::to_string(bin_size) + " bytes, but its index '" +
                     idx_path + "' describes " + std::to_string(seq_begin.back()) + " tokens of " +
                     std::to_string(item_size_) + " bytes = " + std::to_string(want) + " bytes");
  }
  bin_bytes_ = bin_size;
  if (bin_size > 0) {
    void* p = ::mmap(nullptr, static_cast<size_t>(bin_size), PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);
    if (p == MAP_FAILED) throw UsageError("cannot map '" + bin_path + "': " + std::strerror(err));
    bin_ = static_cast<const unsigned char*>(p);
  } else {
    ::close(fd);
  }
  bin_digest_ = ckpt::bytes_digest(bin_, static_cast<size_t>(bin_bytes_));
  // One pass over the tokens: the model's vocabulary is checked against the largest id.
  std::vector<int64_t> chunk(size_t{1} << 16);
  for (int64_t at = 0; at < tokens(); at += static_cast<int64_t>(chunk.size())) {
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(chunk.size()), tokens() - at);
    copy(0, at, n, chunk.data());
    for (int64_t i = 0; i < n; ++i) {
      if (chunk[static_cast<size_t>(i)] < 0) {
        throw UsageError("indexed dataset tokens '" + bin_path + "': token " + std::to_string(at + i) + " is " +
                         std::to_string(chunk[static_cast<size_t>(i)]) + " (token ids are non-negative)");
      }
      max_token_ = std::max(max_token_, chunk[static_cast<size_t>(i)]);
    }
  }
}

IndexedDataset::~IndexedDataset() {
  if (bin_) ::munmap(const_cast<unsigned char*>(bin_), static_cast<size_t>(bin_bytes_));
}

void IndexedDataset::copy(int64_t d, int64_t offset, int64_t count, int64_t* out) const {
  const unsigned char* p = bin_ + (doc_begin_[static_cast<size_t>(d)] + offset) * item_size_;
  switch (item_size_) {
    case 1:
      for (int64_t i = 0; i < count; ++i) out[i] = p[i];
      break;
    case 2:
      for (int64_t i = 0; i < count; ++i) out[i] = p[2 * i] | (p[2 * i + 1] << 8);
      break;
    default:
      for (int64_t i = 0; i < count; ++i) {
        const uint32_t u = static_cast<uint32_t>(p[4 * i]) | (static_cast<uint32_t>(p[4 * i + 1]) << 8) |
                           (static_cast<uint32_t>(p[4 * i + 2]) << 16) | (static_cast<uint32_t>(p[4 * i + 3]) << 24);
        out[i] = static_cast<int32_t>(u);
      }
  }
}

std::string IndexedDataset::dtype_name() const { return item_size_ == 1 ? "uint8" : item_size_ == 2 ? "uint16" : "int32"; }

nlohmann::ordered_json IndexedDataset::content() const {
  return {{"idx", {{"bytes", idx_bytes_}, {"xxh3_64", ckpt::digest_hex(idx_digest_)}}},
          {"bin", {{"bytes", bin_bytes_}, {"xxh3_64", ckpt::digest_hex(bin_digest_)}}}};
}

}  // namespace pmamba::pp
