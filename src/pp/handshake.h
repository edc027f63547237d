// The metadata handshake every pipeline boundary runs before its first tensor: each stage
// sends its neighbours what it believes (shapes, dtypes, modes, digests, options) and compares
// theirs, so a mismatch fails loudly on both sides, naming the field and both values, instead
// of hanging in a size mismatch or silently computing with the wrong tensors.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "src/pp/transport.h"

namespace pmamba::pp {

/// One int64 of the header; real fields carry a double's bits, text fields a hash of a string.
struct HeaderField {
  enum Kind { kInt, kReal, kText };
  std::string name;
  Kind kind = kInt;
  int64_t value = 0;

  static HeaderField integer(std::string name, int64_t v) { return {std::move(name), kInt, v}; }
  static HeaderField real(std::string name, double v);
  static HeaderField text(std::string name, const std::string& v);
};

/// Compares a header received from stage `peer` (`n` int64 values) with this stage's fields;
/// throws PipelineError naming the first field that differs and both values (a header of the
/// wrong length is refused too).
void compare_headers(const std::vector<HeaderField>& fields, const int64_t* theirs, size_t n, int rank, int peer);

/// Exchanges `fields` with stage rank-1 and rank+1 (tags `tag_down` for messages travelling to
/// higher ranks, `tag_up` for the others) and throws PipelineError on the first difference.
/// Every stage must pass the same field names in the same order.
void exchange_headers(Transport& tx, const std::vector<HeaderField>& fields, int tag_down, int tag_up);

/// 64-bit FNV-1a of a string: stable across processes and builds (std::hash is not).
uint64_t fnv1a(const std::string& s);

/// The shortest decimal form of `v` that reads back as the same double.
std::string format_real(double v);

}  // namespace pmamba::pp
