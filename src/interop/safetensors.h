// Strict reader and streaming writer of safetensors files (Hugging Face's weight format) and
// of their sharded index, model.safetensors.index.json. Hand-written: no safetensors library.
//
// The format (huggingface/safetensors README and safetensors/src/tensor.rs):
//
//   bytes [0, 8)          N, the header length: an unsigned 64-bit little-endian integer
//   bytes [8, 8 + N)      the header: UTF-8 JSON, one object
//                           {"__metadata__": {"format": "pt", ...},            optional; string -> string
//                            "NAME": {"dtype": "F32", "shape": [2, 3], "data_offsets": [BEGIN, END]},
//                            ...}
//                         which may be padded with trailing spaces (writers pad to 8 bytes)
//   bytes [8 + N, EOF)    the data section: each tensor's elements, C order, little-endian,
//                         at [BEGIN, END) relative to the start of the data section
//
// What the reader accepts (anything else is a SafetensorsError, one line naming the file, the
// tensor where there is one, and what was expected vs found):
//   - N <= 100,000,000 (safetensors' MAX_HEADER_SIZE) and 8 + N <= the file size;
//   - the header is valid UTF-8 and valid JSON (surrounding whitespace allowed), an object, with
//     no key repeated at any level (a plain JSON parse would silently keep the last value);
//   - every entry but __metadata__ is an object with exactly `dtype` (a string), `shape` (an
//     array of non-negative integers) and `data_offsets` (two non-negative integers, BEGIN <=
//     END), and a non-empty name; __metadata__ is an object of strings;
//   - dtype is one of F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL (the types LibTorch 1.13 has);
//   - the element count fits int64 and count x element size == END - BEGIN;
//   - the ranges, sorted, tile the data section exactly: no range past its end, no overlap, no
//     gap, no trailing bytes (zero-size tensors are empty ranges at a boundary);
//   - BOOL elements are 0 or 1 (checked by read(): any other byte is not a C++ bool).
// Scalars (shape []) and zero-size tensors (a 0 in the shape) are valid.
//
// The format is little-endian; safetensors.cpp refuses to compile on a big-endian host.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace pmamba::interop {

/// Largest header a reader accepts (and a writer produces): safetensors' own MAX_HEADER_SIZE.
inline constexpr uint64_t kMaxHeaderBytes = 100000000;

/// One tensor entry of a safetensors header.
struct TensorInfo {
  std::string name;
  std::string dtype;  // as written in the file: "F32", "BF16", ...
  at::ScalarType scalar_type = at::kFloat;
  std::vector<int64_t> shape;  // [] for a scalar
  uint64_t begin = 0, end = 0;  // byte range [begin, end) relative to the data section
};

/// The safetensors name of a LibTorch dtype ("F32" for kFloat); empty when it has none here.
std::string safetensors_dtype_name(at::ScalarType type);

namespace detail {

/// Owns a file descriptor and closes it once. Move-only.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd();
  int get() const { return fd_; }
  int release() noexcept {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace detail

/// An open safetensors file. The constructor reads and validates the whole header (and nothing
/// else); tensors are then read one at a time, each with pread of only its own bytes, so memory
/// is the header plus the tensor asked for. Holds the file descriptor until destroyed; move-only.
/// read() may be called from several threads at once (pread does not move a file offset).
///
/// Example:
/// ```
/// SafetensorsFile f("model.safetensors");
/// for (const TensorInfo& t : f.tensors()) at::Tensor x = f.read(t.name);
/// ```
class SafetensorsFile {
 public:
  /// Throws SafetensorsError when the file cannot be opened or is not valid (see the top).
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return path_; }
  /// Every tensor, in data-section (offset) order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  /// The entry named `name`; nullptr when the file has none.
  const TensorInfo* find(const std::string& name) const;
  /// __metadata__ ({} when the header has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// A fresh contiguous CPU tensor of the stored dtype and shape. Throws SafetensorsError when
  /// the file has no such tensor, cannot be read, or (BOOL) holds a byte other than 0 or 1.
  at::Tensor read(const std::string& name) const;
  /// The same into `dest`, which must be contiguous, on the CPU, of the stored dtype and shape
  /// (so a caller can reuse one buffer: fresh memory is slow to touch on some machines).
  void read(const std::string& name, at::Tensor& dest) const;
  /// Where the data section starts: 8 + the header length.
  uint64_t data_offset() const { return data_offset_; }

 private:
  std::string path_;
  detail::Fd fd_;
  uint64_t data_offset_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> by_name_;  // name -> index into tensors_
  std::map<std::string, std::string> metadata_;
};

/// One tensor the writer will store: its name, dtype and shape, known before its data.
struct TensorSpec {
  std::string name;
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> shape;
};

/// Streams tensors into a safetensors file at `path`, one at a time: memory is one tensor.
///
/// The header is written first, from `specs` alone: `__metadata__` (= `metadata`, omitted when
/// empty) first, then the tensors in spec order, which is also their data order (offsets are
/// assigned in spec order, without gaps), each entry as {"dtype", "shape", "data_offsets"}. This
/// is the layout Hugging Face's writer produces (its header lists the tensors in data order, with
/// __metadata__ first); only the order differs (HF sorts by dtype alignment, then name; give specs
/// in that order to match it). The header is padded with spaces so the data section starts at a
/// multiple of 8 bytes.
///
/// Then, for each i in order, `produce(i)` is called and its tensor, which must have
/// specs[i].dtype and specs[i].shape (any device, any strides: it is copied to contiguous CPU
/// memory), is written at once.
///
/// Atomic: the bytes go to `path`.tmp-<pid>, which is fsynced and renamed over `path`, then the
/// directory is fsynced. On any failure (a SafetensorsWriteError for a bad spec or a produced
/// tensor that disagrees with its spec, an exception from `produce`, a ckpt::IoError from the
/// operating system) the temporary file is removed, `path` is left as it was, and the exception
/// propagates.
void write_safetensors(const std::string& path, const std::vector<TensorSpec>& specs,
                       const std::function<at::Tensor(size_t)>& produce,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

/// model.safetensors.index.json: which file of a sharded checkpoint holds each tensor.
///   {"metadata": {"total_size": N}, "weight_map": {"NAME": "model-00001-of-00002.safetensors", ...}}
/// total_size is the tensors' data bytes summed over all files (headers not counted).
struct SafetensorsIndex {
  uint64_t total_size = 0;
  std::map<std::string, std::string> weight_map;  // tensor name -> file name (in the index's folder)
};

/// Reads an index strictly: valid UTF-8 JSON, no key repeated at any level, exactly the keys
/// "metadata" and "weight_map" at the top, metadata.total_size a non-negative integer (other
/// metadata entries, such as newer transformers' "total_parameters", are ignored), every
/// weight_map key a non-empty name and every value a plain file name (not empty, "." or "..",
/// no '/', '\' or NUL). Throws SafetensorsError naming the file and the entry.
SafetensorsIndex read_safetensors_index(const std::string& path);

/// Writes an index atomically, as transformers does (2-space indent, keys sorted, final newline).
/// Throws SafetensorsWriteError for a name read_safetensors_index would refuse, ckpt::IoError
/// when the write fails.
void write_safetensors_index(const std::string& path, const SafetensorsIndex& index);

/// Parses a small JSON document (a config.json) as strictly as a header: valid UTF-8, no NUL,
/// valid JSON, no key repeated at any level. Throws SafetensorsError naming `where`.
nlohmann::json parse_json_strict(const std::string& text, const std::string& where);

}  // namespace pmamba::interop
