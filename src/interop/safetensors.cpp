#include "src/interop/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "src/ckpt/errors.h"
#include "src/ckpt/fs.h"
#include "src/interop/errors.h"

// The format is little-endian and tensors are copied between the file and host memory as they
// are; a big-endian host would need a byte swap on every element, which this code does not do.
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "pmamba::interop reads and writes safetensors (little-endian) bytes as host memory: it needs a little-endian host"
#endif

namespace pmamba::interop {

namespace fs = ckpt::fs;
using json = nlohmann::json;

namespace {

// ------------------------------------------------------------------------------------------
// dtypes

struct Dtype {
  const char* name;
  at::ScalarType type;
  uint64_t size;  // bytes per element
};

constexpr Dtype kDtypes[] = {
    {"F64", at::kDouble, 8}, {"F32", at::kFloat, 4}, {"F16", at::kHalf, 2},  {"BF16", at::kBFloat16, 2},
    {"I64", at::kLong, 8},   {"I32", at::kInt, 4},   {"I16", at::kShort, 2}, {"I8", at::kChar, 1},
    {"U8", at::kByte, 1},    {"BOOL", at::kBool, 1},
};
constexpr const char* kDtypeList = "F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL";

// safetensors dtypes (safetensors/src/tensor.rs, enum Dtype) that LibTorch 1.13 has no type for.
constexpr const char* kNoLibTorchType[] = {"U16", "U32", "U64", "F8_E4M3", "F8_E5M2", "F8_E8M0",
                                           "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F6_E2M3", "F6_E3M2", "F4"};

const Dtype* dtype_by_name(const std::string& name) {
  for (const Dtype& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

const Dtype* dtype_by_type(at::ScalarType type) {
  for (const Dtype& d : kDtypes) {
    if (type == d.type) return &d;
  }
  return nullptr;
}

// ------------------------------------------------------------------------------------------
// message pieces: everything taken from a file or a caller goes through fs::printable, so a
// message stays one line whatever bytes a name holds

std::string quote_name(const std::string& s) { return "'" + fs::printable(s, 200) + "'"; }

std::string file_where(const std::string& path) { return "safetensors file '" + fs::printable(path, 4096) + "': "; }

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i == 16 && shape.size() > 17) return out + ", ... (" + std::to_string(shape.size()) + " dimensions)]";
    out += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return out + "]";
}

std::string range_text(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + ")";
}

// Element count and byte size of a shape, or false when either overflows (the count must fit
// int64, LibTorch's numel; the bytes must fit uint64). A 0 anywhere makes both 0, but only once
// the product of the other dimensions fits: that keeps LibTorch's stride arithmetic in range.
bool shape_bytes(const std::vector<int64_t>& shape, uint64_t elem_size, uint64_t* numel, uint64_t* bytes) {
  uint64_t n = 1;
  bool zero = false;
  for (int64_t d : shape) {
    if (d == 0) {
      zero = true;
      continue;
    }
    const auto ud = static_cast<uint64_t>(d);
    if (n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / ud) return false;
    n *= ud;
  }
  if (n > std::numeric_limits<uint64_t>::max() / elem_size) return false;
  *numel = zero ? 0 : n;
  *bytes = zero ? 0 : n * elem_size;
  return true;
}

// Offset of the first byte that is not valid UTF-8 (overlong forms, surrogates and code points
// past U+10FFFF count as invalid, as in RFC 3629), or npos.
size_t invalid_utf8_at(const std::string& s) {
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (n - i < len) return i;
    const auto b1 = static_cast<unsigned char>(s[i + 1]);
    if (b1 < lo || b1 > hi) return i;
    for (size_t k = 2; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return i;
    }
    i += len;
  }
  return std::string::npos;
}

// ------------------------------------------------------------------------------------------
// file reading

// Reads up to n bytes at `offset`; fewer only at the end of the file.
size_t pread_full(int fd, void* buf, size_t n, uint64_t offset, const std::string& where) {
  size_t done = 0;
  while (done < n) {
    const ssize_t got = ::pread(fd, static_cast<char*>(buf) + done, n - done, static_cast<off_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw SafetensorsError(where + "cannot read " + std::to_string(n) + " bytes at byte " +
                             std::to_string(offset) + ": " + std::strerror(errno));
    }
    if (got == 0) break;
    done += static_cast<size_t>(got);
  }
  return done;
}

uint64_t load_le64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// ------------------------------------------------------------------------------------------
// JSON, pass 1: syntax and repeated keys

// nlohmann's DOM parser keeps the last of two equal keys without a word, so two entries for one
// tensor (or a second dtype inside one entry) would pass unseen. This SAX handler builds
// nothing: it keeps, per open object, the keys seen so far, and stops at the first repeat or
// syntax error.
class RepeatedKeyFinder {
 public:
  bool found_repeat = false;
  std::string repeated;    // the repeated key
  std::string outer;       // the top-level key it is under ("" when it is a top-level key)
  size_t depth = 0;        // 1 = top level
  std::string error_text;  // nlohmann's message, when the text is not JSON

  bool null() { return true; }
  bool boolean(bool) { return true; }
  bool number_integer(json::number_integer_t) { return true; }
  bool number_unsigned(json::number_unsigned_t) { return true; }
  bool number_float(json::number_float_t, const std::string&) { return true; }
  bool string(std::string&) { return true; }
  bool binary(json::binary_t&) { return true; }
  bool start_object(std::size_t) {
    open_.emplace_back();
    return true;
  }
  bool key(std::string& k) {
    if (open_.size() == 1) outer_ = k;
    if (!open_.back().insert(k).second) {
      found_repeat = true;
      repeated = k;
      depth = open_.size();
      outer = depth == 1 ? "" : outer_;
      return false;
    }
    return true;
  }
  bool end_object() {
    open_.pop_back();
    return true;
  }
  // An array holds no keys but still nests: an empty set keeps the depth right.
  bool start_array(std::size_t) { return start_object(0); }
  bool end_array() { return end_object(); }
  bool parse_error(std::size_t, const std::string&, const json::exception& e) {
    // "[json.exception.parse_error.101] parse error at line 1, column 9: ..." -> from "parse error".
    const std::string what = e.what();
    const size_t close = what.find("] ");
    error_text = fs::printable(close == std::string::npos ? what : what.substr(close + 2), 300);
    return false;
  }

 private:
  std::vector<std::set<std::string>> open_;
  std::string outer_;
};

// Runs pass 1 over `text`; throws with `where` for invalid UTF-8 or JSON. Returns the finder so
// the caller words the repeated-key message for its own kind of file.
RepeatedKeyFinder check_json_text(const std::string& text, const std::string& where, const char* what) {
  const size_t bad = invalid_utf8_at(text);
  if (bad != std::string::npos) {
    char byte[8];
    std::snprintf(byte, sizeof byte, "0x%02x", static_cast<unsigned char>(text[bad]));
    throw SafetensorsError(where + what + " is not valid UTF-8 (byte " + byte + " at offset " + std::to_string(bad) +
                           " of the " + what + ")");
  }
  // nlohmann's lexer takes a NUL byte for the end of the input, so "{}\0garbage" would parse;
  // JSON allows a NUL nowhere (inside a string it must be escaped).
  const size_t nul = text.find('\0');
  if (nul != std::string::npos) {
    throw SafetensorsError(where + what + " is not valid JSON: a NUL byte at offset " + std::to_string(nul) + " of the " +
                           what);
  }
  RepeatedKeyFinder finder;
  json::sax_parse(text.begin(), text.end(), &finder);
  if (!finder.error_text.empty()) throw SafetensorsError(where + what + " is not valid JSON: " + finder.error_text);
  return finder;
}

// ------------------------------------------------------------------------------------------
// JSON, pass 2: the header's structure

// A SAX handler that checks the header against the format as it streams by (nothing is built
// but the TensorInfo list and the metadata, so memory stays proportional to what is kept) and
// throws at the first violation. Pass 1 has already accepted the text, so events arrive well
// nested; anything nested deeper than a valid header is refused where it appears.
class HeaderParser {
 public:
  HeaderParser(std::string where, std::vector<TensorInfo>* tensors, std::map<std::string, std::string>* metadata)
      : where_(std::move(where)), tensors_(tensors), metadata_(metadata) {}

  bool null() { return misplaced("null"); }
  bool boolean(bool v) { return misplaced(v ? "true" : "false"); }
  bool number_integer(json::number_integer_t v) {
    if (v >= 0) return number_unsigned(static_cast<uint64_t>(v));  // "-0"
    return misplaced("the number " + std::to_string(v));
  }
  bool number_unsigned(json::number_unsigned_t v) {
    if (state_ == State::kShape) {
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        fail(tensor_where() + "shape dimension " + std::to_string(v) + " is out of LibTorch's int64 range");
      }
      entry_.shape.push_back(static_cast<int64_t>(v));
      return true;
    }
    if (state_ == State::kOffsets) {
      if (offsets_.size() == 2) fail(tensor_where() + "data_offsets has more than 2 entries, expected [begin, end]");
      offsets_.push_back(v);
      return true;
    }
    return misplaced("the number " + std::to_string(v));
  }
  bool number_float(json::number_float_t, const std::string& token) {
    return misplaced("the number " + fs::printable(token, 40));
  }
  bool string(std::string& v) {
    if (state_ == State::kMetadata) {
      (*metadata_)[field_] = v;
      return true;
    }
    if (state_ == State::kEntry && field_ == "dtype") {
      entry_.dtype = v;
      have_dtype_ = true;
      return true;
    }
    return misplaced("the string \"" + fs::printable(v, 60) + "\"");
  }
  bool binary(json::binary_t&) { return misplaced("binary data"); }  // JSON text has none
  bool start_object(std::size_t) {
    if (state_ == State::kTop) {
      state_ = State::kRoot;
      return true;
    }
    if (state_ == State::kRoot) {
      if (name_ == "__metadata__") {
        state_ = State::kMetadata;
      } else {
        entry_ = TensorInfo{};
        entry_.name = name_;
        have_dtype_ = have_shape_ = have_offsets_ = false;
        state_ = State::kEntry;
      }
      return true;
    }
    return misplaced("an object");
  }
  bool key(std::string& k) {
    if (state_ == State::kRoot) {
      if (k.empty()) fail("a tensor has an empty name");
      name_ = k;
    } else if (state_ == State::kMetadata) {
      field_ = k;
    } else {  // kEntry: keys arrive only inside objects, and those are the only objects accepted
      if (k != "dtype" && k != "shape" && k != "data_offsets") {
        fail(tensor_where() + "unexpected key " + quote_name(k) + " (an entry holds exactly dtype, shape and data_offsets)");
      }
      field_ = k;
    }
    return true;
  }
  bool end_object() {
    if (state_ == State::kMetadata) {
      state_ = State::kRoot;
    } else if (state_ == State::kEntry) {
      finish_entry();
      state_ = State::kRoot;
    } else {
      state_ = State::kDone;
    }
    return true;
  }
  bool start_array(std::size_t) {
    if (state_ == State::kEntry && field_ == "shape") {
      state_ = State::kShape;
      return true;
    }
    if (state_ == State::kEntry && field_ == "data_offsets") {
      offsets_.clear();
      state_ = State::kOffsets;
      return true;
    }
    return misplaced("an array");
  }
  bool end_array() {
    if (state_ == State::kShape) {
      have_shape_ = true;
    } else {  // kOffsets
      if (offsets_.size() != 2) {
        fail(tensor_where() + "data_offsets has " + std::to_string(offsets_.size()) +
             (offsets_.size() == 1 ? " entry" : " entries") + ", expected 2 [begin, end]");
      }
      if (offsets_[0] > offsets_[1]) {
        fail(tensor_where() + "data_offsets [" + std::to_string(offsets_[0]) + ", " + std::to_string(offsets_[1]) +
             "] begin after they end");
      }
      entry_.begin = offsets_[0];
      entry_.end = offsets_[1];
      have_offsets_ = true;
    }
    state_ = State::kEntry;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const json::exception& e) {  // pass 1 saw none
    fail(std::string("header is not valid JSON: ") + fs::printable(e.what(), 300));
  }

 private:
  enum class State { kTop, kRoot, kMetadata, kEntry, kShape, kOffsets, kDone };

  [[noreturn]] void fail(const std::string& what) const { throw SafetensorsError(where_ + what); }
  std::string tensor_where() const { return "tensor " + quote_name(entry_.name) + ": "; }

  // A value (described by `found`) where the format allows no such value.
  [[noreturn]] bool misplaced(const std::string& found) const { fail(misplaced_message(found)); }
  std::string misplaced_message(const std::string& found) const {
    switch (state_) {
      case State::kTop:
        return "the header is " + found + ", not a JSON object";
      case State::kRoot:
        if (name_ == "__metadata__") return "__metadata__ is " + found + ", not an object of strings";
        return "tensor " + quote_name(name_) + ": its entry is " + found + ", not an object";
      case State::kMetadata:
        return "__metadata__ entry " + quote_name(field_) + " is " + found +
               ", not a string (safetensors allows only strings there)";
      case State::kEntry:
        if (field_ == "dtype") return tensor_where() + "dtype is " + found + ", not a string";
        if (field_ == "shape") return tensor_where() + "shape is " + found + ", not an array of non-negative integers";
        return tensor_where() + "data_offsets is " + found + ", not an array of two non-negative integers";
      case State::kShape:
        return tensor_where() + "shape holds " + found + ", not a non-negative integer";
      case State::kOffsets:
        return tensor_where() + "data_offsets holds " + found + ", not a non-negative integer";
      case State::kDone:
        break;
    }
    return "the header holds " + found + " after its object";  // not reached: pass 1 refuses it
  }

  void finish_entry() {
    const std::string t = tensor_where();
    if (!have_dtype_) fail(t + "its entry lacks dtype");
    if (!have_shape_) fail(t + "its entry lacks shape");
    if (!have_offsets_) fail(t + "its entry lacks data_offsets");
    const Dtype* d = dtype_by_name(entry_.dtype);
    if (!d) {
      if (entry_.dtype == "C64") {
        fail("dtype C64 of tensor " + quote_name(entry_.name) + " is not supported (pmamba reads no complex tensors)");
      }
      for (const char* no : kNoLibTorchType) {
        if (entry_.dtype == no) {
          fail("dtype " + entry_.dtype + " of tensor " + quote_name(entry_.name) +
               " is not supported (LibTorch 1.13 has no such type)");
        }
      }
      fail("unknown dtype " + quote_name(entry_.dtype) + " of tensor " + quote_name(entry_.name) + " (expected one of " +
           kDtypeList + ")");
    }
    entry_.scalar_type = d->type;
    uint64_t numel = 0, bytes = 0;
    if (!shape_bytes(entry_.shape, d->size, &numel, &bytes)) {
      fail(t + "shape " + shape_text(entry_.shape) + " of " + entry_.dtype + " has more elements or bytes than 64 bits count");
    }
    if (bytes != entry_.end - entry_.begin) {
      fail(t + "shape " + shape_text(entry_.shape) + " of " + entry_.dtype + " needs " + std::to_string(bytes) +
           " bytes but data_offsets " + range_text(entry_.begin, entry_.end) + " hold " +
           std::to_string(entry_.end - entry_.begin));
    }
    tensors_->push_back(std::move(entry_));
  }

  std::string where_;
  std::vector<TensorInfo>* tensors_;
  std::map<std::string, std::string>* metadata_;
  State state_ = State::kTop;
  std::string name_;   // the top-level key whose value is being read
  std::string field_;  // the key inside __metadata__ or inside a tensor entry
  TensorInfo entry_;
  bool have_dtype_ = false, have_shape_ = false, have_offsets_ = false;
  std::vector<uint64_t> offsets_;
};

// The sorted ranges must tile [0, data_len): none past the end, no overlap, no gap, no tail.
void check_tiling(const std::vector<TensorInfo>& sorted, uint64_t data_len, const std::string& where) {
  for (const TensorInfo& t : sorted) {
    if (t.end > data_len) {
      throw SafetensorsError(where + "tensor " + quote_name(t.name) + ": data_offsets " + range_text(t.begin, t.end) +
                             " reach past the data section, which holds " + std::to_string(data_len) + " bytes");
    }
  }
  uint64_t covered = 0;  // [0, covered) is tiled so far
  const TensorInfo* last = nullptr;
  for (const TensorInfo& t : sorted) {
    if (t.begin < covered) {
      throw SafetensorsError(where + "tensors " + quote_name(last->name) + " " + range_text(last->begin, last->end) +
                             " and " + quote_name(t.name) + " " + range_text(t.begin, t.end) + " overlap");
    }
    if (t.begin > covered) {
      throw SafetensorsError(where + "no tensor holds bytes " + range_text(covered, t.begin) +
                             " of the data section (a gap " +
                             (last ? "between " + quote_name(last->name) + " and " : "before ") + quote_name(t.name) + ")");
    }
    if (t.end > covered || !last) {
      covered = t.end;
      last = &t;
    }
  }
  if (covered < data_len) {
    throw SafetensorsError(where + "the data section holds " + std::to_string(data_len) + " bytes but its tensors end at byte " +
                           std::to_string(covered) + " (" + std::to_string(data_len - covered) + " trailing bytes)");
  }
}

// ------------------------------------------------------------------------------------------
// file writing

// A temporary file that is removed unless commit() is called (after it has been renamed).
class TempFile {
 public:
  explicit TempFile(std::string path) : path_(std::move(path)) {}
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile() {
    if (!committed_) ::unlink(path_.c_str());
  }
  const std::string& path() const { return path_; }
  void commit() { committed_ = true; }

 private:
  std::string path_;
  bool committed_ = false;
};

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  size_t done = 0;
  while (done < n) {
    const ssize_t put = ::write(fd, static_cast<const char*>(data) + done, n - done);
    if (put < 0) {
      if (errno == EINTR) continue;
      throw ckpt::IoError("cannot write '" + path + "': " + std::strerror(errno));
    }
    done += static_cast<size_t>(put);
  }
}

void check_plain_file_name(const std::string& file, const std::string& name, const std::string& where, bool writing) {
  std::string why;
  if (file.empty()) why = "it is empty";
  else if (file == "." || file == "..") why = "it names a directory";
  else if (file.find('/') != std::string::npos) why = "it contains '/'";
  else if (file.find('\\') != std::string::npos) why = "it contains '\\'";
  else if (file.find('\0') != std::string::npos) why = "it contains a NUL byte";
  if (why.empty()) return;
  const std::string msg = where + "weight_map entry " + quote_name(name) + ": " + quote_name(file) +
                          " is not a plain file name in the index's folder (" + why + ")";
  if (writing) throw SafetensorsWriteError(msg);
  throw SafetensorsError(msg);
}

// ------------------------------------------------------------------------------------------
// index, pass 2

// Streams an index past the same kind of state machine as the header: nothing but the result
// is built. Values of metadata entries other than total_size are skipped, however nested.
class IndexParser {
 public:
  IndexParser(std::string where, SafetensorsIndex* out) : where_(std::move(where)), out_(out) {}

  bool null() { return value("null"); }
  bool boolean(bool v) { return value(v ? "true" : "false"); }
  bool number_integer(json::number_integer_t v) {
    if (v >= 0) return number_unsigned(static_cast<uint64_t>(v));
    return value("the number " + std::to_string(v));
  }
  bool number_unsigned(json::number_unsigned_t v) {
    if (skip_ == 0 && state_ == State::kMetadata && field_ == "total_size") {
      out_->total_size = v;
      have_total_ = true;
      return true;
    }
    return value("the number " + std::to_string(v));
  }
  bool number_float(json::number_float_t, const std::string& token) {
    return value("the number " + fs::printable(token, 40));
  }
  bool string(std::string& v) {
    if (skip_ == 0 && state_ == State::kWeightMap) {
      check_plain_file_name(v, field_, where_, false);
      out_->weight_map[field_] = v;
      return true;
    }
    return value("the string \"" + fs::printable(v, 60) + "\"");
  }
  bool binary(json::binary_t&) { return value("binary data"); }
  bool start_object(std::size_t) {
    if (skip_ > 0 || skipping_value()) {
      ++skip_;
      return true;
    }
    if (state_ == State::kTop) {
      state_ = State::kRoot;
      return true;
    }
    if (state_ == State::kRoot && field_ == "metadata") {
      state_ = State::kMetadata;
      have_metadata_ = true;
      return true;
    }
    if (state_ == State::kRoot && field_ == "weight_map") {
      state_ = State::kWeightMap;
      have_weight_map_ = true;
      return true;
    }
    return value("an object");
  }
  bool start_array(std::size_t) {
    if (skip_ > 0 || skipping_value()) {
      ++skip_;
      return true;
    }
    return value("an array");
  }
  bool key(std::string& k) {
    if (skip_ > 0) return true;
    if (state_ == State::kRoot && k != "metadata" && k != "weight_map") {
      fail("unexpected key " + quote_name(k) + " (an index holds exactly metadata and weight_map)");
    }
    if (state_ == State::kWeightMap && k.empty()) fail("weight_map has an entry with an empty tensor name");
    field_ = k;
    return true;
  }
  bool end_object() {
    if (skip_ > 0) {
      --skip_;
      return true;
    }
    if (state_ == State::kMetadata || state_ == State::kWeightMap) {
      if (state_ == State::kMetadata && !have_total_) fail("metadata lacks total_size");
      state_ = State::kRoot;
      field_.clear();
    } else if (state_ == State::kRoot) {
      if (!have_metadata_) fail("the index lacks metadata");
      if (!have_weight_map_) fail("the index lacks weight_map");
      state_ = State::kDone;
    }
    return true;
  }
  bool end_array() {
    --skip_;  // only skipped arrays are ever opened
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const json::exception& e) {  // pass 1 saw none
    fail(std::string("index is not valid JSON: ") + fs::printable(e.what(), 300));
  }

 private:
  enum class State { kTop, kRoot, kMetadata, kWeightMap, kDone };

  [[noreturn]] void fail(const std::string& what) const { throw SafetensorsError(where_ + what); }
  // Inside metadata, every entry but total_size is ignored, whatever its value.
  bool skipping_value() const { return state_ == State::kMetadata && field_ != "total_size"; }

  bool value(const std::string& found) {
    if (skip_ > 0 || skipping_value()) return true;
    fail(misplaced_message(found));
  }
  std::string misplaced_message(const std::string& found) const {
    switch (state_) {
      case State::kTop:
        return "the index is " + found + ", not a JSON object";
      case State::kRoot:
        return field_ + " is " + found + ", not an object";
      case State::kMetadata:
        return "metadata.total_size is " + found + ", not a non-negative integer";
      case State::kWeightMap:
        return "weight_map entry " + quote_name(field_) + " is " + found + ", not a file name string";
      case State::kDone:
        break;
    }
    return "the index holds " + found + " after its object";  // not reached: pass 1 refuses it
  }

  std::string where_;
  SafetensorsIndex* out_;
  State state_ = State::kTop;
  std::string field_;
  int64_t skip_ = 0;  // depth inside an ignored metadata value
  bool have_metadata_ = false, have_weight_map_ = false, have_total_ = false;
};

constexpr int64_t kMaxIndexBytes = 64 << 20;

[[noreturn]] void refuse_write(const std::string& where, const std::string& what) {
  throw SafetensorsWriteError(where + what);
}

}  // namespace

// ------------------------------------------------------------------------------------------

std::string safetensors_dtype_name(at::ScalarType type) {
  const Dtype* d = dtype_by_type(type);
  return d ? d->name : "";
}

namespace detail {

Fd& Fd::operator=(Fd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.release();
  }
  return *this;
}

Fd::~Fd() {
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace detail

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const std::string where = file_where(path);
  int64_t size = 0;
  try {
    // A regular file only: a FIFO or a device could block or never end.
    fd_ = detail::Fd(fs::open_regular(path, std::numeric_limits<int64_t>::max(), &size));
  } catch (const ckpt::Error& e) {
    throw SafetensorsError(where + e.what());
  }
  const auto file_size = static_cast<uint64_t>(size);
  if (file_size < 8) {
    throw SafetensorsError(where + "the file is " + std::to_string(file_size) +
                           " bytes, shorter than the 8-byte header length every safetensors file starts with");
  }
  unsigned char head[8];
  if (pread_full(fd_.get(), head, 8, 0, where) != 8) {
    throw SafetensorsError(where + "the file ended before its 8-byte header length (it changed while being opened)");
  }
  const uint64_t n = load_le64(head);
  if (n > kMaxHeaderBytes) {
    throw SafetensorsError(where + "header length " + std::to_string(n) + " is over the limit of " +
                           std::to_string(kMaxHeaderBytes) + " bytes");
  }
  if (8 + n > file_size) {
    throw SafetensorsError(where + "header length " + std::to_string(n) + " needs a file of at least " +
                           std::to_string(8 + n) + " bytes, but the file has " + std::to_string(file_size));
  }
  if (n == 0) throw SafetensorsError(where + "header length is 0, but the header must hold a JSON object");
  std::string header(n, '\0');
  if (pread_full(fd_.get(), header.data(), n, 8, where) != n) {
    throw SafetensorsError(where + "the file ended inside its header (it changed while being opened)");
  }
  data_offset_ = 8 + n;

  const RepeatedKeyFinder repeat = check_json_text(header, where, "header");
  if (repeat.found_repeat) {
    const std::string k = quote_name(repeat.repeated);
    if (repeat.depth == 1) {
      throw SafetensorsError(where + (repeat.repeated == "__metadata__" ? "__metadata__" : "tensor " + k) +
                             " appears twice in the header");
    }
    const std::string in = repeat.outer == "__metadata__" ? "__metadata__" : "the entry of tensor " + quote_name(repeat.outer);
    throw SafetensorsError(where + "key " + k + " appears twice in " + (repeat.depth == 2 ? in : "a value inside " + in));
  }
  HeaderParser parser(where, &tensors_, &metadata_);
  json::sax_parse(header.begin(), header.end(), &parser);

  // Data order; equal offsets (zero-size tensors) keep header order.
  std::stable_sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  check_tiling(tensors_, file_size - data_offset_, where);
  for (size_t i = 0; i < tensors_.size(); ++i) by_name_.emplace(tensors_[i].name, i);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

at::Tensor SafetensorsFile::read(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (!t) throw SafetensorsError(file_where(path_) + "no tensor " + quote_name(name));
  at::Tensor out = at::empty(t->shape, at::TensorOptions().dtype(t->scalar_type));
  read(name, out);
  return out;
}

void SafetensorsFile::read(const std::string& name, at::Tensor& out) const {
  const std::string where = file_where(path_);
  const TensorInfo* t = find(name);
  if (!t) throw SafetensorsError(where + "no tensor " + quote_name(name));
  TORCH_CHECK(out.defined() && out.is_cpu() && out.is_contiguous() && out.scalar_type() == t->scalar_type &&
                  out.sizes() == at::IntArrayRef(t->shape),
              "SafetensorsFile::read: the destination of '", name, "' must be a contiguous CPU tensor of its dtype and shape");
  const uint64_t n = t->end - t->begin;
  TORCH_INTERNAL_ASSERT(static_cast<uint64_t>(out.nbytes()) == n, "validated size disagrees with LibTorch's");
  if (n == 0) return;
  if (pread_full(fd_.get(), out.data_ptr(), n, data_offset_ + t->begin, where) != n) {
    throw SafetensorsError(where + "tensor " + quote_name(name) + ": the file ends before byte " +
                           std::to_string(data_offset_ + t->end) + " (it shrank after it was opened)");
  }
  if (t->scalar_type == at::kBool) {
    // A C++ bool must be 0 or 1: anything else is undefined behaviour in every later use.
    const auto* p = static_cast<const unsigned char*>(out.data_ptr());
    for (uint64_t i = 0; i < n; ++i) {
      if (p[i] > 1) {
        throw SafetensorsError(where + "tensor " + quote_name(name) + ": BOOL element " + std::to_string(i) + " is " +
                               std::to_string(p[i]) + ", not 0 or 1");
      }
    }
  }
}

void write_safetensors(const std::string& path, const std::vector<TensorSpec>& specs,
                       const std::function<at::Tensor(size_t)>& produce,
                       const std::map<std::string, std::string>& metadata) {
  const std::string where = file_where(path);
  auto refuse = [&where](const std::string& what) { refuse_write(where, what); };

  // The whole header comes from the specs, so a bad spec is refused before a byte is written.
  std::string header = "{";
  if (!metadata.empty()) {
    for (const auto& [k, v] : metadata) {
      if (invalid_utf8_at(k) != std::string::npos) refuse("metadata key " + quote_name(k) + " is not valid UTF-8");
      if (invalid_utf8_at(v) != std::string::npos) refuse("metadata value of " + quote_name(k) + " is not valid UTF-8");
    }
    header += "\"__metadata__\":" + json(metadata).dump();
  }
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const TensorSpec& s : specs) {
    const std::string t = "tensor " + quote_name(s.name) + ": ";
    if (s.name.empty()) refuse("a tensor spec has an empty name");
    if (s.name == "__metadata__") refuse("a tensor cannot be named __metadata__ (the header's metadata key)");
    if (invalid_utf8_at(s.name) != std::string::npos) refuse(t + "its name is not valid UTF-8");
    if (!names.insert(s.name).second) refuse(t + "it appears twice in the specs");
    const Dtype* d = dtype_by_type(s.dtype);
    if (!d) {
      refuse(t + "dtype " + std::string(c10::toString(s.dtype)) + " has no safetensors type here (supported: " +
             kDtypeList + ")");
    }
    for (int64_t dim : s.shape) {
      if (dim < 0) refuse(t + "shape " + shape_text(s.shape) + " has a negative dimension");
    }
    uint64_t numel = 0, bytes = 0;
    if (!shape_bytes(s.shape, d->size, &numel, &bytes) || bytes > std::numeric_limits<uint64_t>::max() - offset) {
      refuse(t + "shape " + shape_text(s.shape) + " is too large to store");
    }
    std::string shape = "[";
    for (size_t i = 0; i < s.shape.size(); ++i) shape += (i ? "," : "") + std::to_string(s.shape[i]);
    header += std::string(header.size() > 1 ? "," : "") + json(s.name).dump() + ":{\"dtype\":\"" + d->name +
              "\",\"shape\":" + shape + "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + bytes) + "]}";
    offset += bytes;
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');  // the data section starts 8-byte aligned
  if (header.size() > kMaxHeaderBytes) {
    refuse("the header would be " + std::to_string(header.size()) + " bytes, over the limit of " +
           std::to_string(kMaxHeaderBytes) + " readers accept");
  }

  TempFile tmp(path + ".tmp-" + std::to_string(::getpid()));
  detail::Fd fd(::open(tmp.path().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) throw ckpt::IoError("cannot create '" + tmp.path() + "': " + std::strerror(errno));
  unsigned char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(static_cast<uint64_t>(header.size()) >> (8 * i));
  write_all(fd.get(), length, 8, tmp.path());
  write_all(fd.get(), header.data(), header.size(), tmp.path());

  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& s = specs[i];
    const std::string t = "tensor " + quote_name(s.name) + ": ";
    const at::Tensor produced = produce(i);
    if (!produced.defined()) refuse(t + "produce(" + std::to_string(i) + ") returned an undefined tensor");
    if (produced.layout() != at::kStrided) refuse(t + "the produced tensor is not dense (strided)");
    if (produced.scalar_type() != s.dtype) {
      refuse(t + "the produced tensor is " + c10::toString(produced.scalar_type()) + " but its spec says " +
             c10::toString(s.dtype));
    }
    if (produced.sizes() != at::IntArrayRef(s.shape)) {
      refuse(t + "the produced tensor has shape " + shape_text(produced.sizes().vec()) + " but its spec says " +
             shape_text(s.shape));
    }
    // One tensor in memory at a time: this copy (when one is needed) dies with the iteration.
    const at::Tensor c = produced.detach().to(at::kCPU).resolve_conj().resolve_neg().contiguous();
    if (c.nbytes() > 0) write_all(fd.get(), c.data_ptr(), c.nbytes(), tmp.path());
  }
  if (::fsync(fd.get()) != 0) throw ckpt::IoError("fsync of '" + tmp.path() + "' failed: " + std::strerror(errno));
  if (::close(fd.release()) != 0) throw ckpt::IoError("cannot close '" + tmp.path() + "': " + std::strerror(errno));
  fs::rename_path(tmp.path(), path);
  tmp.commit();
  fs::fsync_path(fs::parent(path));
}

SafetensorsIndex read_safetensors_index(const std::string& path) {
  const std::string where = "safetensors index '" + fs::printable(path, 4096) + "': ";
  std::string text;
  try {
    text = fs::read_file(path, kMaxIndexBytes);
  } catch (const ckpt::Error& e) {
    throw SafetensorsError(where + e.what());
  }
  const RepeatedKeyFinder repeat = check_json_text(text, where, "index");
  if (repeat.found_repeat) {
    const std::string in = repeat.depth == 1 ? "the index" : repeat.depth == 2 ? repeat.outer : "a value inside " + repeat.outer;
    throw SafetensorsError(where + "key " + quote_name(repeat.repeated) + " appears twice in " + in);
  }
  SafetensorsIndex index;
  IndexParser parser(where, &index);
  json::sax_parse(text.begin(), text.end(), &parser);
  return index;
}

void write_safetensors_index(const std::string& path, const SafetensorsIndex& index) {
  const std::string where = "safetensors index '" + fs::printable(path, 4096) + "': ";
  for (const auto& [name, file] : index.weight_map) {
    if (name.empty()) throw SafetensorsWriteError(where + "weight_map has an entry with an empty tensor name");
    if (invalid_utf8_at(name) != std::string::npos) {
      throw SafetensorsWriteError(where + "weight_map entry " + quote_name(name) + ": the name is not valid UTF-8");
    }
    check_plain_file_name(file, name, where, true);
    if (invalid_utf8_at(file) != std::string::npos) {
      throw SafetensorsWriteError(where + "weight_map entry " + quote_name(name) + ": the file name is not valid UTF-8");
    }
  }
  json j;
  j["metadata"]["total_size"] = index.total_size;
  j["weight_map"] = index.weight_map;
  // transformers writes json.dumps(index, indent=2, sort_keys=True) + "\n"; std::map sorts too.
  fs::write_file_atomic(path, j.dump(2) + "\n");
}

nlohmann::json parse_json_strict(const std::string& text, const std::string& where) {
  const RepeatedKeyFinder finder = check_json_text(text, where + ": the ", "text");
  if (finder.found_repeat) {
    throw SafetensorsError(where + ": key '" + fs::printable(finder.repeated) + "' appears twice" +
                           (finder.outer.empty() ? std::string() : " inside '" + fs::printable(finder.outer) + "'") +
                           " (a JSON reader would keep only the last)");
  }
  return nlohmann::json::parse(text);
}

}  // namespace pmamba::interop
