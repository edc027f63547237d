// The safetensors reader, writer and index (src/interop/safetensors.h). Bad files are written
// byte by byte here (8-byte little-endian length + JSON + data), independently of the writer,
// and each refusal is checked against its whole one-line message.
#include "src/interop/safetensors.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "src/ckpt/fs.h"
#include "src/interop/errors.h"
#include "tests/test_util.h"

namespace pmamba::interop {
namespace {

namespace fs = ckpt::fs;

// ---------------------------------------------------------------------------------------------
// hand-made files

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

/// A safetensors file as bytes: the header's length, the header, the data section.
std::string st_bytes(const std::string& header, const std::string& data = "") {
  return le64(header.size()) + header + data;
}

/// One header entry.
std::string entry(const std::string& dtype, const std::string& shape, uint64_t begin, uint64_t end) {
  return "{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" + std::to_string(begin) + "," +
         std::to_string(end) + "]}";
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string tensor_bytes(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return c.nbytes() ? std::string(static_cast<const char*>(c.data_ptr()), c.nbytes()) : std::string();
}

template <typename T>
at::Tensor values(std::vector<T> v, at::ScalarType type, std::vector<int64_t> shape = {}) {
  if (shape.empty()) shape = {static_cast<int64_t>(v.size())};
  return at::from_blob(v.data(), shape, at::TensorOptions().dtype(type)).clone();
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::temp_dir("st"); }
  void TearDown() override { test::remove_tree(dir_); }

  std::string path(const std::string& name = "t.safetensors") const { return dir_ + "/" + name; }
  std::string put(const std::string& bytes, const std::string& name = "t.safetensors") const {
    spit(path(name), bytes);
    return path(name);
  }
  static std::string where(const std::string& p) { return "safetensors file '" + p + "': "; }

  /// Opening `bytes` as a file is refused with exactly "safetensors file '<path>': <what>".
  ::testing::AssertionResult refused(const std::string& bytes, const std::string& what) const {
    const std::string p = put(bytes);
    try {
      SafetensorsFile f(p);
    } catch (const SafetensorsError& e) {
      const std::string msg = e.what();
      if (msg != where(p) + what) {
        return ::testing::AssertionFailure() << "message was\n  " << msg << "\nexpected\n  " << where(p) + what;
      }
      if (msg.find('\n') != std::string::npos) return ::testing::AssertionFailure() << "message has a newline: " << msg;
      return ::testing::AssertionSuccess();
    }
    return ::testing::AssertionFailure() << "accepted; expected the error: " << what;
  }

  /// The files in the test directory (to see that nothing was left behind).
  std::vector<std::string> files() const { return fs::list_dir(dir_); }

  std::string dir_;
};

using SafetensorsReader = SafetensorsTest;
using SafetensorsWriter = SafetensorsTest;
using SafetensorsIndexFiles = SafetensorsTest;

// ---------------------------------------------------------------------------------------------
// reading valid files

TEST_F(SafetensorsReader, ReadsHandMadeBytesExactly) {
  // Keys out of data order, __metadata__ in the middle, whitespace around the object, an
  // unaligned int64 scalar and a zero-size tensor at the end.
  const std::string header = std::string(" {\"b\":") + entry("BF16", "[2]", 8, 12) +
                             ",\"__metadata__\":{\"format\":\"pt\",\"note\":\"hand made\"},\"a\":" +
                             entry("F32", "[2]", 0, 8) + ",\"s\":" + entry("I64", "[]", 12, 20) +
                             ",\"z\":" + entry("U8", "[0,4]", 20, 20) + "}   ";
  const std::string data = std::string("\x00\x00\xc0\x3f\x00\x00\x00\xc0", 8)  // a: 1.5, -2.0
                           + std::string("\x80\x3f\x00\xbf", 4)                  // b: 1.0, -0.5
                           + std::string("\xf9\xff\xff\xff\xff\xff\xff\xff", 8);  // s: -7
  const SafetensorsFile f(put(st_bytes(header, data)));

  EXPECT_EQ(f.path(), path());
  EXPECT_EQ(f.data_offset(), 8 + header.size());
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"note", "hand made"}}));
  ASSERT_EQ(f.tensors().size(), 4u);
  const char* order[] = {"a", "b", "s", "z"};
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(f.tensors()[i].name, order[i]);
  const TensorInfo* b = f.find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, "BF16");
  EXPECT_EQ(b->scalar_type, at::kBFloat16);
  EXPECT_EQ(b->shape, std::vector<int64_t>{2});
  EXPECT_EQ(b->begin, 8u);
  EXPECT_EQ(b->end, 12u);
  EXPECT_EQ(f.find("missing"), nullptr);

  EXPECT_TRUE(test::bitwise_equal(f.read("a"), values<float>({1.5f, -2.0f}, at::kFloat)));
  EXPECT_TRUE(test::bitwise_equal(f.read("b"), values<float>({1.0f, -0.5f}, at::kFloat).to(at::kBFloat16)));
  const at::Tensor s = f.read("s");
  EXPECT_EQ(s.dim(), 0);
  EXPECT_EQ(s.item<int64_t>(), -7);
  const at::Tensor z = f.read("z");
  EXPECT_EQ(z.scalar_type(), at::kByte);
  EXPECT_EQ(z.sizes(), (std::vector<int64_t>{0, 4}));
}

TEST_F(SafetensorsReader, ReadsFileWrittenByTheOfficialLibrary) {
  // tests/fixtures/make_st_official.py (safetensors 0.8.0): sorted by dtype alignment, then name.
  const SafetensorsFile f(test::fixture("st_official.safetensors"));
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  EXPECT_EQ(f.data_offset() % 8, 0u);
  const std::map<std::string, at::Tensor> expected = {
      {"i64", values<int64_t>({-(int64_t{1} << 62), -1, 0, (int64_t{1} << 40) + 7}, at::kLong)},
      {"f64", at::arange(6, at::kDouble).reshape({2, 3}) / 8 - 0.25},
      {"backbone.layers.0.mixer.A_log", (at::arange(1, 9, at::kFloat) / 4).reshape({2, 4})},
      {"empty", at::zeros({0, 3}, at::kFloat)},
      {"f32", ((at::arange(24, at::kFloat) - 12) * 0.125).reshape({2, 3, 4})},
      {"scalar", at::scalar_tensor(3.5, at::kFloat)},
      {"i32", at::arange(-3, 3, at::kInt).reshape({3, 2})},
      {"bf16", (at::arange(4, at::kFloat) * 1.5 - 2).to(at::kBFloat16)},
      {"f16", (at::arange(5, at::kFloat) * 0.5 - 1).to(at::kHalf)},
      {"i16", values<int16_t>({-32768, 32767, 0, 5}, at::kShort)},
      {"i8", values<int8_t>({-128, 127, 1}, at::kChar)},
      {"u8", values<uint8_t>({0, 255, 128, 7}, at::kByte)},
      {"bool", values<uint8_t>({1, 0, 1}, at::kBool, {1, 3})},
  };
  const std::vector<std::string> order = {"i64", "f64", "backbone.layers.0.mixer.A_log", "empty", "f32", "scalar", "i32",
                                          "bf16", "f16", "i16", "i8", "u8", "bool"};
  ASSERT_EQ(f.tensors().size(), order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    const TensorInfo& t = f.tensors()[i];
    EXPECT_EQ(t.name, order[i]);
    const at::Tensor got = f.read(t.name);
    EXPECT_TRUE(test::bitwise_equal(got, expected.at(t.name))) << t.name << ": " << got;
  }
  EXPECT_EQ(f.find("scalar")->shape, std::vector<int64_t>{});
  EXPECT_EQ(f.find("bf16")->dtype, "BF16");
}

TEST_F(SafetensorsReader, AcceptsAnEmptyFileAndZeroSizeTensorsAtEveryBoundary) {
  EXPECT_TRUE(SafetensorsFile(put(st_bytes("{}"))).tensors().empty());
  EXPECT_TRUE(SafetensorsFile(put(st_bytes("{}        "))).metadata().empty());
  const std::string header = "{\"e0\":" + entry("F32", "[0]", 0, 0) + ",\"a\":" + entry("U8", "[2]", 0, 2) +
                             ",\"e1\":" + entry("I64", "[3,0]", 2, 2) + ",\"e2\":" + entry("F16", "[0,0,5]", 2, 2) +
                             ",\"b\":" + entry("U8", "[1]", 2, 3) + ",\"e3\":" + entry("BOOL", "[0]", 3, 3) + "}";
  const SafetensorsFile f(put(st_bytes(header, "xyz")));
  std::vector<std::string> names;
  for (const TensorInfo& t : f.tensors()) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"e0", "a", "e1", "e2", "b", "e3"}));
  EXPECT_EQ(f.read("e1").sizes(), (std::vector<int64_t>{3, 0}));
  EXPECT_EQ(tensor_bytes(f.read("b")), "z");
}

TEST_F(SafetensorsReader, ReadsEachTensorFromItsOwnBytesOnly) {
  const std::string header = "{\"a\":" + entry("U8", "[4]", 0, 4) + ",\"b\":" + entry("U8", "[4]", 4, 8) + "}";
  const std::string p = put(st_bytes(header, "abcdefgh"));
  const SafetensorsFile f(p);
  // Cut the file after a's bytes: a still reads (nothing past its range is touched), b cannot.
  ASSERT_EQ(::truncate(p.c_str(), static_cast<off_t>(f.data_offset() + 4)), 0);
  EXPECT_EQ(tensor_bytes(f.read("a")), "abcd");
  EXPECT_EQ(tensor_bytes(f.read("a")), "abcd");
  PMAMBA_EXPECT_THROW_WITH(f.read("b"), SafetensorsError,
                           where(p) + "tensor 'b': the file ends before byte " + std::to_string(f.data_offset() + 8) +
                               " (it shrank after it was opened)");
}

TEST_F(SafetensorsReader, ReadRefusesATensorTheFileLacks) {
  const SafetensorsFile f(put(st_bytes("{}")));
  PMAMBA_EXPECT_THROW_WITH(f.read("zzz"), SafetensorsError, where(path()) + "no tensor 'zzz'");
}

TEST_F(SafetensorsReader, IsMovable) {
  SafetensorsFile a(put(st_bytes("{\"a\":" + entry("U8", "[1]", 0, 1) + "}", "q")));
  SafetensorsFile b(std::move(a));
  EXPECT_EQ(tensor_bytes(b.read("a")), "q");
}

// ---------------------------------------------------------------------------------------------
// refusing bad files: one test per rule, each asserting the whole message

TEST_F(SafetensorsReader, RejectsFileShorterThanEightBytes) {
  EXPECT_TRUE(refused("abcde", "the file is 5 bytes, shorter than the 8-byte header length every safetensors file starts with"));
  EXPECT_TRUE(refused("", "the file is 0 bytes, shorter than the 8-byte header length every safetensors file starts with"));
}

TEST_F(SafetensorsReader, RejectsHeaderLengthOverTheLimit) {
  EXPECT_TRUE(refused(le64(100000001) + "{}", "header length 100000001 is over the limit of 100000000 bytes"));
  EXPECT_TRUE(refused(le64(std::numeric_limits<uint64_t>::max()) + "{}",
                      "header length 18446744073709551615 is over the limit of 100000000 bytes"));
}

TEST_F(SafetensorsReader, RejectsHeaderLengthPastTheEndOfTheFile) {
  EXPECT_TRUE(refused(le64(100) + "{}      ", "header length 100 needs a file of at least 108 bytes, but the file has 16"));
  EXPECT_TRUE(refused(le64(3) + "{}", "header length 3 needs a file of at least 11 bytes, but the file has 10"));
}

TEST_F(SafetensorsReader, RejectsEmptyHeader) {
  EXPECT_TRUE(refused(le64(0), "header length is 0, but the header must hold a JSON object"));
}

TEST_F(SafetensorsReader, RejectsHeaderThatIsNotUtf8) {
  EXPECT_TRUE(refused(st_bytes("{\"a\xff\":1}"), "header is not valid UTF-8 (byte 0xff at offset 3 of the header)"));
  EXPECT_TRUE(refused(st_bytes("{\"\xc0\xaf\":1}"), "header is not valid UTF-8 (byte 0xc0 at offset 2 of the header)"));  // overlong '/'
  EXPECT_TRUE(refused(st_bytes("{\"\xed\xa0\x80\":1}"), "header is not valid UTF-8 (byte 0xed at offset 2 of the header)"));  // surrogate
  EXPECT_TRUE(refused(st_bytes("{\"\xe2\x82\":1}"), "header is not valid UTF-8 (byte 0xe2 at offset 2 of the header)"));  // cut short
}

TEST_F(SafetensorsReader, RejectsHeaderThatIsNotJson) {
  EXPECT_TRUE(refused(st_bytes("{\"a\": {\"dtype\": \"F32\",}}"),
                      "header is not valid JSON: parse error at line 1, column 23: syntax error while parsing object key - "
                      "unexpected '}'; expected string literal"));
  EXPECT_TRUE(refused(st_bytes("{} x"), "header is not valid JSON: parse error at line 1, column 4: syntax error while "
                                        "parsing value - invalid literal; last read: '{} x'; expected end of input"));
  // nlohmann alone would stop at the NUL and accept the object before it.
  EXPECT_TRUE(refused(st_bytes(std::string("{}\0\0junk", 8)), "header is not valid JSON: a NUL byte at offset 2 of the header"));
}

TEST_F(SafetensorsReader, RejectsHeaderThatIsNotAnObject) {
  EXPECT_TRUE(refused(st_bytes("[1, 2]"), "the header is an array, not a JSON object"));
  EXPECT_TRUE(refused(st_bytes("\"x\""), "the header is the string \"x\", not a JSON object"));
  EXPECT_TRUE(refused(st_bytes("null"), "the header is null, not a JSON object"));
}

TEST_F(SafetensorsReader, RejectsRepeatedTensorName) {
  const std::string e = entry("U8", "[1]", 0, 1);
  EXPECT_TRUE(refused(st_bytes("{\"a\":" + e + ",\"a\":" + e + "}", "x"), "tensor 'a' appears twice in the header"));
}

TEST_F(SafetensorsReader, RejectsRepeatedKeyInsideAnEntry) {
  EXPECT_TRUE(refused(st_bytes("{\"a\":{\"dtype\":\"U8\",\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[0,1]}}", "x"),
                      "key 'dtype' appears twice in the entry of tensor 'a'"));
  EXPECT_TRUE(refused(st_bytes("{\"a\":{\"dtype\":\"U8\",\"shape\":[{\"k\":1,\"k\":2}],\"data_offsets\":[0,1]}}", "x"),
                      "key 'k' appears twice in a value inside the entry of tensor 'a'"));
}

TEST_F(SafetensorsReader, RejectsRepeatedMetadata) {
  EXPECT_TRUE(refused(st_bytes("{\"__metadata__\":{\"format\":\"pt\",\"format\":\"np\"}}"),
                      "key 'format' appears twice in __metadata__"));
  EXPECT_TRUE(refused(st_bytes("{\"__metadata__\":{},\"__metadata__\":{}}"), "__metadata__ appears twice in the header"));
}

TEST_F(SafetensorsReader, RejectsEntryThatIsNotAnObject) {
  EXPECT_TRUE(refused(st_bytes("{\"a\":5}"), "tensor 'a': its entry is the number 5, not an object"));
  EXPECT_TRUE(refused(st_bytes("{\"a\":[\"F32\",[1],[0,4]]}"), "tensor 'a': its entry is an array, not an object"));
}

TEST_F(SafetensorsReader, RejectsEntryLackingAField) {
  EXPECT_TRUE(refused(st_bytes("{\"a\":{\"shape\":[1],\"data_offsets\":[0,1]}}", "x"), "tensor 'a': its entry lacks dtype"));
  EXPECT_TRUE(refused(st_bytes("{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", "x"), "tensor 'a': its entry lacks shape"));
  EXPECT_TRUE(refused(st_bytes("{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", "x"), "tensor 'a': its entry lacks data_offsets"));
}

TEST_F(SafetensorsReader, RejectsEntryWithAnExtraKey) {
  EXPECT_TRUE(refused(st_bytes("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"extra\":1}}", "x"),
                      "tensor 'a': unexpected key 'extra' (an entry holds exactly dtype, shape and data_offsets)"));
}

TEST_F(SafetensorsReader, RejectsFieldsOfTheWrongType) {
  auto with = [](const std::string& dtype, const std::string& shape, const std::string& offsets) {
    return st_bytes("{\"a\":{\"dtype\":" + dtype + ",\"shape\":" + shape + ",\"data_offsets\":" + offsets + "}}", "abcdefgh");
  };
  EXPECT_TRUE(refused(with("5", "[2]", "[0,8]"), "tensor 'a': dtype is the number 5, not a string"));
  EXPECT_TRUE(refused(with("\"F32\"", "\"2\"", "[0,8]"),
                      "tensor 'a': shape is the string \"2\", not an array of non-negative integers"));
  EXPECT_TRUE(refused(with("\"F32\"", "[-2]", "[0,8]"), "tensor 'a': shape holds the number -2, not a non-negative integer"));
  EXPECT_TRUE(refused(with("\"F32\"", "[2.0]", "[0,8]"), "tensor 'a': shape holds the number 2.0, not a non-negative integer"));
  EXPECT_TRUE(refused(with("\"F32\"", "[[2]]", "[0,8]"), "tensor 'a': shape holds an array, not a non-negative integer"));
  EXPECT_TRUE(refused(with("\"F32\"", "[true]", "[0,8]"), "tensor 'a': shape holds true, not a non-negative integer"));
  EXPECT_TRUE(refused(with("\"F32\"", "[9223372036854775808]", "[0,8]"),
                      "tensor 'a': shape dimension 9223372036854775808 is out of LibTorch's int64 range"));
  EXPECT_TRUE(refused(with("\"F32\"", "[2]", "{}"),
                      "tensor 'a': data_offsets is an object, not an array of two non-negative integers"));
  EXPECT_TRUE(refused(with("\"F32\"", "[2]", "[8]"), "tensor 'a': data_offsets has 1 entry, expected 2 [begin, end]"));
  EXPECT_TRUE(refused(with("\"F32\"", "[2]", "[]"), "tensor 'a': data_offsets has 0 entries, expected 2 [begin, end]"));
  EXPECT_TRUE(refused(with("\"F32\"", "[2]", "[0,8,8]"), "tensor 'a': data_offsets has more than 2 entries, expected [begin, end]"));
  EXPECT_TRUE(refused(with("\"F32\"", "[2]", "[-1,8]"), "tensor 'a': data_offsets holds the number -1, not a non-negative integer"));
  EXPECT_TRUE(refused(with("\"F32\"", "[2]", "[0,8.5]"), "tensor 'a': data_offsets holds the number 8.5, not a non-negative integer"));
  EXPECT_TRUE(refused(with("\"F32\"", "[2]", "[8,0]"), "tensor 'a': data_offsets [8, 0] begin after they end"));
}

TEST_F(SafetensorsReader, RejectsMetadataThatIsNotAnObjectOfStrings) {
  EXPECT_TRUE(refused(st_bytes("{\"__metadata__\":\"pt\"}"), "__metadata__ is the string \"pt\", not an object of strings"));
  EXPECT_TRUE(refused(st_bytes("{\"__metadata__\":{\"format\":1}}"),
                      "__metadata__ entry 'format' is the number 1, not a string (safetensors allows only strings there)"));
  EXPECT_TRUE(refused(st_bytes("{\"__metadata__\":{\"a\":{\"b\":\"c\"}}}"),
                      "__metadata__ entry 'a' is an object, not a string (safetensors allows only strings there)"));
  EXPECT_TRUE(refused(st_bytes("{\"__metadata__\":{\"a\":null}}"),
                      "__metadata__ entry 'a' is null, not a string (safetensors allows only strings there)"));
}

TEST_F(SafetensorsReader, RejectsEmptyTensorName) {
  EXPECT_TRUE(refused(st_bytes("{\"\":" + entry("U8", "[1]", 0, 1) + "}", "x"), "a tensor has an empty name"));
}

TEST_F(SafetensorsReader, RefusesDtypesLibTorchLacksByName) {
  for (const char* d : {"U16", "U32", "U64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4"}) {
    EXPECT_TRUE(refused(st_bytes("{\"x\":" + entry(d, "[1]", 0, 4) + "}", "abcd"),
                        "dtype " + std::string(d) + " of tensor 'x' is not supported (LibTorch 1.13 has no such type)"));
  }
  EXPECT_TRUE(refused(st_bytes("{\"x\":" + entry("C64", "[1]", 0, 8) + "}", "abcdefgh"),
                      "dtype C64 of tensor 'x' is not supported (pmamba reads no complex tensors)"));
  EXPECT_TRUE(refused(st_bytes("{\"x\":" + entry("F33", "[1]", 0, 4) + "}", "abcd"),
                      "unknown dtype 'F33' of tensor 'x' (expected one of F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)"));
  EXPECT_TRUE(refused(st_bytes("{\"x\":" + entry("f32", "[1]", 0, 4) + "}", "abcd"),
                      "unknown dtype 'f32' of tensor 'x' (expected one of F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)"));
}

TEST_F(SafetensorsReader, RejectsShapeWhoseSizeOverflows) {
  EXPECT_TRUE(refused(st_bytes("{\"a\":" + entry("F32", "[4294967296,4294967296]", 0, 0) + "}"),
                      "tensor 'a': shape [4294967296, 4294967296] of F32 has more elements or bytes than 64 bits count"));
  // 2^61 float64 elements fit int64, their 2^64 bytes do not fit uint64.
  EXPECT_TRUE(refused(st_bytes("{\"a\":" + entry("F64", "[2305843009213693952]", 0, 0) + "}"),
                      "tensor 'a': shape [2305843009213693952] of F64 has more elements or bytes than 64 bits count"));
  // A zero makes the count 0, but only once the other dimensions multiply without overflow.
  EXPECT_TRUE(refused(st_bytes("{\"a\":" + entry("U8", "[4294967296,4294967296,0]", 0, 0) + "}"),
                      "tensor 'a': shape [4294967296, 4294967296, 0] of U8 has more elements or bytes than 64 bits count"));
}

TEST_F(SafetensorsReader, RejectsByteCountThatDisagreesWithTheShape) {
  EXPECT_TRUE(refused(st_bytes("{\"a\":" + entry("F32", "[2,3]", 0, 20) + "}", std::string(20, 'x')),
                      "tensor 'a': shape [2, 3] of F32 needs 24 bytes but data_offsets [0, 20) hold 20"));
  EXPECT_TRUE(refused(st_bytes("{\"a\":" + entry("BF16", "[]", 0, 4) + "}", "abcd"),
                      "tensor 'a': shape [] of BF16 needs 2 bytes but data_offsets [0, 4) hold 4"));
}

TEST_F(SafetensorsReader, RejectsRangePastTheDataSection) {
  EXPECT_TRUE(refused(st_bytes("{\"a\":" + entry("F32", "[2]", 0, 8) + "}", "abcd"),
                      "tensor 'a': data_offsets [0, 8) reach past the data section, which holds 4 bytes"));
  EXPECT_TRUE(refused(st_bytes("{\"a\":" + entry("U8", "[0]", 9, 9) + "}", "abcd"),
                      "tensor 'a': data_offsets [9, 9) reach past the data section, which holds 4 bytes"));
}

TEST_F(SafetensorsReader, RejectsOverlappingRanges) {
  EXPECT_TRUE(refused(st_bytes("{\"b\":" + entry("F32", "[2]", 4, 12) + ",\"a\":" + entry("F32", "[2]", 0, 8) + "}",
                               std::string(12, 'x')),
                      "tensors 'a' [0, 8) and 'b' [4, 12) overlap"));
  EXPECT_TRUE(refused(st_bytes("{\"a\":" + entry("U8", "[4]", 0, 4) + ",\"b\":" + entry("U8", "[4]", 0, 4) + "}", "abcd"),
                      "tensors 'a' [0, 4) and 'b' [0, 4) overlap"));
  // An empty range inside another tensor's bytes is no boundary either.
  EXPECT_TRUE(refused(st_bytes("{\"a\":" + entry("U8", "[4]", 0, 4) + ",\"e\":" + entry("U8", "[0]", 2, 2) + "}", "abcd"),
                      "tensors 'a' [0, 4) and 'e' [2, 2) overlap"));
}

TEST_F(SafetensorsReader, RejectsGapsInTheDataSection) {
  EXPECT_TRUE(refused(st_bytes("{\"a\":" + entry("F32", "[2]", 0, 8) + ",\"b\":" + entry("F32", "[2]", 12, 20) + "}",
                               std::string(20, 'x')),
                      "no tensor holds bytes [8, 12) of the data section (a gap between 'a' and 'b')"));
  EXPECT_TRUE(refused(st_bytes("{\"a\":" + entry("F32", "[2]", 4, 12) + "}", std::string(12, 'x')),
                      "no tensor holds bytes [0, 4) of the data section (a gap before 'a')"));
}

TEST_F(SafetensorsReader, RejectsTrailingBytes) {
  EXPECT_TRUE(refused(st_bytes("{\"a\":" + entry("F32", "[2]", 0, 8) + "}", std::string(10, 'x')),
                      "the data section holds 10 bytes but its tensors end at byte 8 (2 trailing bytes)"));
  EXPECT_TRUE(refused(st_bytes("{}", "abc"), "the data section holds 3 bytes but its tensors end at byte 0 (3 trailing bytes)"));
}

TEST_F(SafetensorsReader, RejectsBoolByteOtherThanZeroOrOne) {
  const SafetensorsFile f(put(st_bytes("{\"m\":" + entry("BOOL", "[3]", 0, 3) + "}", std::string("\x01\x02\x00", 3))));
  PMAMBA_EXPECT_THROW_WITH(f.read("m"), SafetensorsError, where(path()) + "tensor 'm': BOOL element 1 is 2, not 0 or 1");
}

TEST_F(SafetensorsReader, RejectsWhatIsNotARegularFile) {
  PMAMBA_EXPECT_THROW_WITH(SafetensorsFile f(dir_), SafetensorsError,
                           where(dir_) + "'" + dir_ + "' is a directory, not a regular file");
  const std::string missing = path("missing.safetensors");
  PMAMBA_EXPECT_THROW_WITH(SafetensorsFile f(missing), SafetensorsError,
                           where(missing) + "cannot open '" + missing + "': No such file or directory");
}

TEST_F(SafetensorsReader, KeepsOddNamesOnOneLine) {
  EXPECT_TRUE(refused(st_bytes("{\"a\\nb\":" + entry("U8", "[1]", 0, 1) + "}", "xy"),
                      "the data section holds 2 bytes but its tensors end at byte 1 (1 trailing bytes)"));
  EXPECT_TRUE(refused(st_bytes("{\"a\\nb\\u00e9\":5}"), "tensor 'a\\x0ab\\xc3\\xa9': its entry is the number 5, not an object"));
}

TEST_F(SafetensorsReader, ErrorsMapToTheToolsUnreadableInputClass) {
  // tools/tool_main.h maps every ckpt::Error to exit code 2; the fuzz targets accept it too.
  const std::string p = put("abc");
  try {
    SafetensorsFile f(p);
    FAIL() << "accepted";
  } catch (const ckpt::FormatError& e) {
    EXPECT_NE(dynamic_cast<const SafetensorsError*>(&e), nullptr);
  }
}

// ---------------------------------------------------------------------------------------------
// writing

TEST_F(SafetensorsWriter, RoundTripsEveryDtypeBitwise) {
  at::manual_seed(7);
  std::vector<at::Tensor> tensors = {
      at::randn({3, 4}, at::kDouble),
      values<float>({0.0f, -0.0f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(),
                     std::numeric_limits<float>::denorm_min(), 1.0f / 3},
                    at::kFloat, {2, 3}),
      at::randn({5}).to(at::kHalf),
      at::randn({2, 2, 2}).to(at::kBFloat16),
      at::randint(-(int64_t{1} << 62), int64_t{1} << 62, {4}, at::kLong),
      at::randint(-1000000, 1000000, {3}, at::kInt),
      at::randint(-32768, 32767, {3}, at::kShort),
      at::randint(-128, 127, {7}, at::kChar),
      at::randint(0, 256, {2, 5}, at::kByte),
      at::randint(0, 2, {9}, at::kLong).to(at::kBool),
      at::scalar_tensor(2.75, at::kFloat),  // shape []
      at::zeros({0, 4}, at::kFloat),        // zero-size
      at::randn({4, 3}).t(),                // not contiguous: stored in C order of its (3, 4) shape
  };
  std::vector<TensorSpec> specs;
  for (size_t i = 0; i < tensors.size(); ++i) {
    specs.push_back({"t" + std::to_string(i), tensors[i].scalar_type(), tensors[i].sizes().vec()});
  }
  write_safetensors(path(), specs, [&](size_t i) { return tensors[i]; });
  EXPECT_EQ(files(), std::vector<std::string>{"t.safetensors"});

  const SafetensorsFile f(path());
  ASSERT_EQ(f.tensors().size(), tensors.size());
  std::string data;
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_EQ(f.tensors()[i].name, specs[i].name);  // data order == spec order
    EXPECT_EQ(f.tensors()[i].dtype, safetensors_dtype_name(tensors[i].scalar_type()));
    const at::Tensor back = f.read(specs[i].name);
    EXPECT_TRUE(back.is_contiguous());
    EXPECT_TRUE(test::bitwise_equal(back, tensors[i])) << specs[i].name;
    data += tensor_bytes(tensors[i]);
  }
  // The data section is the tensors' C-order bytes, one after another, nothing else.
  EXPECT_EQ(slurp(path()).substr(f.data_offset()), data);
}

TEST_F(SafetensorsWriter, WritesHeaderInSpecOrderWithMetadataFirstPaddedToEightBytes) {
  const std::vector<TensorSpec> specs = {{"b.weight", at::kFloat, {2}}, {"a", at::kBFloat16, {}}};
  const std::vector<at::Tensor> t = {at::ones({2}), at::zeros({}, at::kBFloat16)};
  write_safetensors(path(), specs, [&](size_t i) { return t[i]; });
  const std::string json =
      "{\"__metadata__\":{\"format\":\"pt\"},\"b.weight\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"a\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[8,10]}}";
  const std::string bytes = slurp(path());
  const uint64_t n = (json.size() + 7) / 8 * 8;
  ASSERT_EQ(bytes.size(), 8 + n + 10);
  EXPECT_EQ(bytes.substr(0, 8), le64(n));
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes.substr(8, n), json + std::string(n - json.size(), ' '));
  const SafetensorsFile f(path());
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  EXPECT_EQ(f.data_offset() % 8, 0u);
}

TEST_F(SafetensorsWriter, WritesGivenMetadataOrNone) {
  write_safetensors(path("m"), {}, [](size_t) { return at::Tensor(); }, {{"format", "pt"}, {"source", "pmamba"}});
  EXPECT_EQ(SafetensorsFile(path("m")).metadata(),
            (std::map<std::string, std::string>{{"format", "pt"}, {"source", "pmamba"}}));
  write_safetensors(path("n"), {}, [](size_t) { return at::Tensor(); }, {});
  EXPECT_EQ(slurp(path("n")), le64(8) + "{}      ");
  EXPECT_TRUE(SafetensorsFile(path("n")).metadata().empty());
}

TEST_F(SafetensorsWriter, ProducesEachTensorOnceInOrderBeforeThePathExists) {
  const std::vector<TensorSpec> specs = {{"x", at::kFloat, {3}}, {"y", at::kInt, {2}}, {"z", at::kByte, {1}}};
  std::vector<size_t> calls;
  write_safetensors(path(), specs, [&](size_t i) {
    calls.push_back(i);
    // Nothing at PATH while it is being written; only the temporary file.
    EXPECT_FALSE(fs::exists(path()));
    EXPECT_EQ(files(), std::vector<std::string>{"t.safetensors.tmp-" + std::to_string(::getpid())});
    return at::full(specs[i].shape, static_cast<double>(i), at::TensorOptions().dtype(specs[i].dtype));
  });
  EXPECT_EQ(calls, (std::vector<size_t>{0, 1, 2}));
  const SafetensorsFile f(path());
  EXPECT_EQ(f.read("y").sum().item<int64_t>(), 2);
}

TEST_F(SafetensorsWriter, RefusesProducedTensorOfAnotherDtypeAndLeavesNoFile) {
  const std::vector<TensorSpec> specs = {{"a", at::kFloat, {2}}, {"b", at::kFloat, {2}}};
  PMAMBA_EXPECT_THROW_WITH(write_safetensors(path(), specs, [](size_t i) { return at::zeros({2}, i ? at::kDouble : at::kFloat); }),
                           SafetensorsWriteError,
                           where(path()) + "tensor 'b': the produced tensor is Double but its spec says Float");
  EXPECT_TRUE(files().empty());
}

TEST_F(SafetensorsWriter, RefusesProducedTensorOfAnotherShapeAndKeepsTheOldFile) {
  spit(path(), "old contents");
  const std::vector<TensorSpec> specs = {{"a", at::kFloat, {2, 3}}};
  PMAMBA_EXPECT_THROW_WITH(write_safetensors(path(), specs, [](size_t) { return at::zeros({3, 2}); }), SafetensorsWriteError,
                           where(path()) + "tensor 'a': the produced tensor has shape [3, 2] but its spec says [2, 3]");
  EXPECT_EQ(files(), std::vector<std::string>{"t.safetensors"});
  EXPECT_EQ(slurp(path()), "old contents");
  PMAMBA_EXPECT_THROW_WITH(write_safetensors(path(), specs, [](size_t) { return at::Tensor(); }), SafetensorsWriteError,
                           where(path()) + "tensor 'a': produce(0) returned an undefined tensor");
  EXPECT_EQ(slurp(path()), "old contents");
}

TEST_F(SafetensorsWriter, PassesAnExceptionFromProduceOnAndLeavesNoFile) {
  const std::vector<TensorSpec> specs = {{"a", at::kFloat, {2}}, {"b", at::kFloat, {2}}};
  EXPECT_THROW(write_safetensors(path(), specs,
                                 [](size_t i) {
                                   if (i == 1) throw std::out_of_range("no tensor 1");
                                   return at::zeros({2});
                                 }),
               std::out_of_range);
  EXPECT_TRUE(files().empty());
}

TEST_F(SafetensorsWriter, RefusesBadSpecsBeforeProducingAnything) {
  auto never = [](size_t) -> at::Tensor {
    ADD_FAILURE() << "produce called";
    return {};
  };
  const std::string w = where(path());
  PMAMBA_EXPECT_THROW_WITH(write_safetensors(path(), {{"", at::kFloat, {1}}}, never), SafetensorsWriteError,
                           w + "a tensor spec has an empty name");
  PMAMBA_EXPECT_THROW_WITH(write_safetensors(path(), {{"a", at::kFloat, {1}}, {"a", at::kFloat, {1}}}, never),
                           SafetensorsWriteError, w + "tensor 'a': it appears twice in the specs");
  PMAMBA_EXPECT_THROW_WITH(write_safetensors(path(), {{"__metadata__", at::kFloat, {1}}}, never), SafetensorsWriteError,
                           w + "a tensor cannot be named __metadata__ (the header's metadata key)");
  PMAMBA_EXPECT_THROW_WITH(write_safetensors(path(), {{"c", at::kComplexFloat, {1}}}, never), SafetensorsWriteError,
                           w + "tensor 'c': dtype ComplexFloat has no safetensors type here (supported: F64, F32, F16, "
                               "BF16, I64, I32, I16, I8, U8, BOOL)");
  PMAMBA_EXPECT_THROW_WITH(write_safetensors(path(), {{"n", at::kFloat, {2, -1}}}, never), SafetensorsWriteError,
                           w + "tensor 'n': shape [2, -1] has a negative dimension");
  PMAMBA_EXPECT_THROW_WITH(write_safetensors(path(), {{"h", at::kFloat, {int64_t{1} << 62, 4}}}, never),
                           SafetensorsWriteError, w + "tensor 'h': shape [4611686018427387904, 4] is too large to store");
  PMAMBA_EXPECT_THROW_WITH(write_safetensors(path(), {{"\xff", at::kFloat, {1}}}, never), SafetensorsWriteError,
                           w + "tensor '\\xff': its name is not valid UTF-8");
  PMAMBA_EXPECT_THROW_WITH(write_safetensors(path(), {}, never, {{"k", "\xc3"}}), SafetensorsWriteError,
                           w + "metadata value of 'k' is not valid UTF-8");
  EXPECT_TRUE(files().empty());
}

TEST_F(SafetensorsWriter, ReportsAFolderThatDoesNotExist) {
  const std::string p = dir_ + "/no/such/dir/x.safetensors";
  PMAMBA_EXPECT_THROW_WITH(write_safetensors(p, {}, [](size_t) { return at::Tensor(); }), ckpt::IoError,
                           "cannot create '" + p + ".tmp-");
}

// ---------------------------------------------------------------------------------------------
// the sharded index

TEST_F(SafetensorsIndexFiles, RoundTripsAndWritesTransformersLayout) {
  SafetensorsIndex index;
  index.total_size = 1234;
  index.weight_map = {{"backbone.embeddings.weight", "model-00001-of-00002.safetensors"},
                      {"backbone.norm_f.weight", "model-00002-of-00002.safetensors"}};
  const std::string p = path("model.safetensors.index.json");
  write_safetensors_index(p, index);
  EXPECT_EQ(slurp(p),
            "{\n"
            "  \"metadata\": {\n"
            "    \"total_size\": 1234\n"
            "  },\n"
            "  \"weight_map\": {\n"
            "    \"backbone.embeddings.weight\": \"model-00001-of-00002.safetensors\",\n"
            "    \"backbone.norm_f.weight\": \"model-00002-of-00002.safetensors\"\n"
            "  }\n"
            "}\n");
  const SafetensorsIndex back = read_safetensors_index(p);
  EXPECT_EQ(back.total_size, index.total_size);
  EXPECT_EQ(back.weight_map, index.weight_map);
  EXPECT_EQ(files(), std::vector<std::string>{"model.safetensors.index.json"});
}

TEST_F(SafetensorsIndexFiles, ReadsTransformersExtraMetadata) {
  const std::string p = put(
      "{\"metadata\": {\"total_parameters\": 5, \"total_size\": 20, \"note\": {\"x\": [1, {\"y\": null}]}},\n"
      " \"weight_map\": {\"a\": \"m.safetensors\", \"b\": \"m.safetensors\"}}\n",
      "i.json");
  const SafetensorsIndex index = read_safetensors_index(p);
  EXPECT_EQ(index.total_size, 20u);
  EXPECT_EQ(index.weight_map, (std::map<std::string, std::string>{{"a", "m.safetensors"}, {"b", "m.safetensors"}}));
}

TEST_F(SafetensorsIndexFiles, RejectsBadIndexes) {
  auto refused_index = [&](const std::string& text, const std::string& what) -> ::testing::AssertionResult {
    const std::string p = put(text, "i.json");
    try {
      read_safetensors_index(p);
    } catch (const SafetensorsError& e) {
      const std::string expected = "safetensors index '" + p + "': " + what;
      if (e.what() != expected) return ::testing::AssertionFailure() << "message was\n  " << e.what() << "\nexpected\n  " << expected;
      return ::testing::AssertionSuccess();
    }
    return ::testing::AssertionFailure() << "accepted; expected: " << what;
  };
  const std::string meta = "\"metadata\":{\"total_size\":8}";
  EXPECT_TRUE(refused_index("{" + meta + ",\"weight_map\":{\"a\":\"m.safetensors\",\"a\":\"n.safetensors\"}}",
                            "key 'a' appears twice in weight_map"));
  EXPECT_TRUE(refused_index("{" + meta + "," + meta + ",\"weight_map\":{}}", "key 'metadata' appears twice in the index"));
  EXPECT_TRUE(refused_index("{" + meta + ",\"weight_map\":{\"a\":\"sub/m.safetensors\"}}",
                            "weight_map entry 'a': 'sub/m.safetensors' is not a plain file name in the index's folder "
                            "(it contains '/')"));
  EXPECT_TRUE(refused_index("{" + meta + ",\"weight_map\":{\"a\":\"..\"}}",
                            "weight_map entry 'a': '..' is not a plain file name in the index's folder (it names a directory)"));
  EXPECT_TRUE(refused_index("{" + meta + ",\"weight_map\":{\"a\":\"\"}}",
                            "weight_map entry 'a': '' is not a plain file name in the index's folder (it is empty)"));
  EXPECT_TRUE(refused_index("{" + meta + ",\"weight_map\":{\"a\":3}}", "weight_map entry 'a' is the number 3, not a file name string"));
  EXPECT_TRUE(refused_index("{" + meta + ",\"weight_map\":{\"\":\"m\"}}", "weight_map has an entry with an empty tensor name"));
  EXPECT_TRUE(refused_index("{\"metadata\":{\"total_size\":1.5},\"weight_map\":{}}",
                            "metadata.total_size is the number 1.5, not a non-negative integer"));
  EXPECT_TRUE(refused_index("{\"metadata\":{\"total_size\":-1},\"weight_map\":{}}",
                            "metadata.total_size is the number -1, not a non-negative integer"));
  EXPECT_TRUE(refused_index("{\"metadata\":{\"total_size\":\"8\"},\"weight_map\":{}}",
                            "metadata.total_size is the string \"8\", not a non-negative integer"));
  EXPECT_TRUE(refused_index("{\"metadata\":{},\"weight_map\":{}}", "metadata lacks total_size"));
  EXPECT_TRUE(refused_index("{" + meta + "}", "the index lacks weight_map"));
  EXPECT_TRUE(refused_index("{\"weight_map\":{}}", "the index lacks metadata"));
  EXPECT_TRUE(refused_index("{" + meta + ",\"weight_map\":[]}", "weight_map is an array, not an object"));
  EXPECT_TRUE(refused_index("{" + meta + ",\"weight_map\":{},\"extra\":1}",
                            "unexpected key 'extra' (an index holds exactly metadata and weight_map)"));
  EXPECT_TRUE(refused_index("[]", "the index is an array, not a JSON object"));
  EXPECT_TRUE(refused_index("{" + meta + ",",
                            "index is not valid JSON: parse error at line 1, column 30: syntax error while parsing object "
                            "key - unexpected end of input; expected string literal"));
  EXPECT_TRUE(refused_index("{\"\xfe\":1}", "index is not valid UTF-8 (byte 0xfe at offset 2 of the index)"));
  EXPECT_TRUE(refused_index(std::string("{}\0", 3), "index is not valid JSON: a NUL byte at offset 2 of the index"));
}

TEST_F(SafetensorsIndexFiles, WriterRefusesAFileNameOutsideTheFolder) {
  SafetensorsIndex index;
  index.weight_map = {{"a", "../m.safetensors"}};
  const std::string p = path("i.json");
  PMAMBA_EXPECT_THROW_WITH(write_safetensors_index(p, index), SafetensorsWriteError,
                           "safetensors index '" + p + "': weight_map entry 'a': '../m.safetensors' is not a plain file "
                           "name in the index's folder (it contains '/')");
  EXPECT_TRUE(files().empty());
}

}  // namespace
}  // namespace pmamba::interop
