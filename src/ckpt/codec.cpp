// ZSTD_compressSequences (zstd >= 1.5.1) is in zstd's static-linking section; Debian's shared
// libzstd exports it.
#define ZSTD_STATIC_LINKING_ONLY
#include "src/ckpt/codec.h"

#include <algorithm>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "src/ckpt/errors.h"

namespace pmamba::ckpt {

namespace {

#if defined(__SSE2__)
// The shuffle of 16 elements at a time as byte transposes in SSE2 registers (x86-64's baseline,
// so no dispatch): the byte-gather loop the compiler makes of the generic code runs at about
// 8 GB/s on one thread here, this one at about 18 GB/s, and a zstd save shuffles every byte.
// Returns how many elements it did; the caller finishes the rest. Output is identical.
size_t shuffle4_sse2(const uint8_t* in, uint8_t* out, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 4 * i));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 4 * i + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 4 * i + 32));
    const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 4 * i + 48));
    // Three rounds of byte interleaving leave byte k of elements 0-7 (from a, b) and 8-15
    // (from c, d) in consecutive halves; 64-bit unpacks join the halves.
    const __m128i t0 = _mm_unpacklo_epi8(a, b), t1 = _mm_unpackhi_epi8(a, b);
    const __m128i t2 = _mm_unpacklo_epi8(c, d), t3 = _mm_unpackhi_epi8(c, d);
    const __m128i u0 = _mm_unpacklo_epi8(t0, t1), u1 = _mm_unpackhi_epi8(t0, t1);
    const __m128i u2 = _mm_unpacklo_epi8(t2, t3), u3 = _mm_unpackhi_epi8(t2, t3);
    const __m128i v0 = _mm_unpacklo_epi8(u0, u1), v1 = _mm_unpackhi_epi8(u0, u1);
    const __m128i v2 = _mm_unpacklo_epi8(u2, u3), v3 = _mm_unpackhi_epi8(u2, u3);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm_unpacklo_epi64(v0, v2));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + n + i), _mm_unpackhi_epi64(v0, v2));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * n + i), _mm_unpacklo_epi64(v1, v3));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 3 * n + i), _mm_unpackhi_epi64(v1, v3));
  }
  return i;
}

size_t shuffle2_sse2(const uint8_t* in, uint8_t* out, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i + 16));
    const __m128i t0 = _mm_unpacklo_epi8(a, b), t1 = _mm_unpackhi_epi8(a, b);
    const __m128i u0 = _mm_unpacklo_epi8(t0, t1), u1 = _mm_unpackhi_epi8(t0, t1);
    const __m128i v0 = _mm_unpacklo_epi8(u0, u1), v1 = _mm_unpackhi_epi8(u0, u1);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm_unpacklo_epi8(v0, v1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + n + i), _mm_unpackhi_epi8(v0, v1));
  }
  return i;
}
#endif

}  // namespace

void shuffle_bytes(const uint8_t* in, uint8_t* out, size_t bytes, size_t elem_size) {
  if (bytes == 0) return;  // an empty tensor's pointers may be null
  if (elem_size <= 1) {
    std::memcpy(out, in, bytes);
    return;
  }
  const size_t n = bytes / elem_size;
  size_t first = 0;  // elements already shuffled by a vector path
#if defined(__SSE2__)
  if (elem_size == 4) first = shuffle4_sse2(in, out, n);
  if (elem_size == 2) first = shuffle2_sse2(in, out, n);
#endif
  for (size_t j = 0; j < elem_size; ++j) {
    uint8_t* dst = out + j * n;
    const uint8_t* src = in + j;
    for (size_t i = first; i < n; ++i) dst[i] = src[i * elem_size];
  }
  const size_t tail = bytes - n * elem_size;  // HDF5 copies leftover bytes unchanged
  std::memcpy(out + n * elem_size, in + n * elem_size, tail);
}

void unshuffle_bytes(const uint8_t* in, uint8_t* out, size_t bytes, size_t elem_size) {
  if (bytes == 0) return;
  if (elem_size <= 1) {
    std::memcpy(out, in, bytes);
    return;
  }
  const size_t n = bytes / elem_size;
  for (size_t j = 0; j < elem_size; ++j) {
    const uint8_t* src = in + j * n;
    uint8_t* dst = out + j;
    for (size_t i = 0; i < n; ++i) dst[i * elem_size] = src[i];
  }
  const size_t tail = bytes - n * elem_size;
  std::memcpy(out + n * elem_size, in + n * elem_size, tail);
}

Compression Compression::parse(const std::string& text) {
  Compression c;
  if (text == "none") return c;
  if (text == "zstd") {
    c.zstd = true;
    return c;
  }
  if (text.rfind("zstd:", 0) == 0) {
    const std::string num = text.substr(5);
    size_t used = 0;
    int level = 0;
    try {
      level = std::stoi(num, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == num.size() && used > 0 && level >= 1 && level <= ZSTD_maxCLevel()) {
      c.zstd = true;
      c.level = level;
      return c;
    }
  }
  throw UsageError("unknown compression '" + text + "' (expected none, zstd or zstd:LEVEL with LEVEL 1.." +
                   std::to_string(ZSTD_maxCLevel()) + ")");
}

std::string Compression::str() const { return zstd ? "zstd:" + std::to_string(level) : "none"; }

namespace {

// Chunks up to this size are coded both ways and the smaller frame kept; larger ones decide
// from a sample of each byte plane.
constexpr size_t kTryBoth = 64 << 10;
constexpr size_t kSample = 32 << 10;

size_t checked(size_t n, const char* what) {
  if (ZSTD_isError(n)) throw Error(std::string("zstd ") + what + " failed: " + ZSTD_getErrorName(n));
  return n;
}

// zstd's own single pass at `level`: match finder, then entropy coding. One-shot compression
// writes the content size into the frame header, which the hdf5plugin decoder needs.
size_t zstd_pass(ZSTD_CCtx* cctx, uint8_t* out, size_t capacity, const uint8_t* src, size_t n, int level) {
  return checked(ZSTD_compressCCtx(cctx, out, capacity, src, n, level), "compression");
}

// The same frame format with the match finder left out: every block is literals only, Huffman
// coded at `level`'s entropy settings (or RLE, or stored raw where that is smaller). On
// shuffled float planes the match finder costs about half of zstd -1's time and finds nothing
// worth keeping: the frame comes out ~1% larger than entropy coding alone.
size_t zstd_literals(ZSTD_CCtx* cctx, uint8_t* out, size_t capacity, const uint8_t* src, size_t n, int level) {
#if ZSTD_VERSION_NUMBER >= 10501
  ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters);
  checked(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level), "parameter setting");
  return checked(ZSTD_compressSequences(cctx, out, capacity, nullptr, 0, src, n), "entropy coding");
#else
  return zstd_pass(cctx, out, capacity, src, n, level);
#endif
}

}  // namespace

size_t encode_chunk(const uint8_t* raw, size_t bytes, size_t elem_size, int level, ZSTD_CCtx* cctx,
                    std::vector<uint8_t>& scratch, uint8_t* out, size_t capacity) {
  if (capacity < ZSTD_compressBound(bytes)) throw UsageError("internal: encode_chunk output below ZSTD_compressBound");
  const size_t sample_cap = std::min(bytes, kSample);
  const size_t spare = bytes <= kTryBoth ? ZSTD_compressBound(bytes) : sample_cap + 2 * ZSTD_compressBound(sample_cap);
  if (scratch.size() < bytes + spare) scratch.resize(bytes + spare);
  uint8_t* shuffled = scratch.data();
  uint8_t* extra = scratch.data() + bytes;
  shuffle_bytes(raw, shuffled, bytes, elem_size);
  if (bytes <= kTryBoth) {
    const size_t full = zstd_pass(cctx, out, capacity, shuffled, bytes, level);
    const size_t lits = zstd_literals(cctx, extra, spare, shuffled, bytes, level);
    if (lits >= full) return full;
    std::memcpy(out, extra, lits);
    return lits;
  }
  // The sample: the start of each byte plane (after the shuffle, plane j holds byte j of every
  // element), so the exponent bytes and the runs or repeats a plane has are all represented.
  // The match finder is kept where it makes the sample at least 10% smaller: zeros, repeated
  // rows, small integers.
  const size_t planes = std::max<size_t>(1, elem_size);
  const size_t plane_bytes = bytes / planes;
  const size_t per_plane = std::min(plane_bytes, kSample / planes);
  uint8_t* sample = extra;
  size_t sampled = 0;
  for (size_t j = 0; j < planes; ++j, sampled += per_plane) std::memcpy(sample + sampled, shuffled + j * plane_bytes, per_plane);
  uint8_t* a = sample + sample_cap;
  uint8_t* b = a + ZSTD_compressBound(sample_cap);
  const size_t full = zstd_pass(cctx, a, ZSTD_compressBound(sample_cap), sample, sampled, level);
  const size_t lits = zstd_literals(cctx, b, ZSTD_compressBound(sample_cap), sample, sampled, level);
  if (full * 10 < lits * 9) return zstd_pass(cctx, out, capacity, shuffled, bytes, level);
  return zstd_literals(cctx, out, capacity, shuffled, bytes, level);
}

void encode_chunk(const uint8_t* raw, size_t bytes, size_t elem_size, int level, ZSTD_CCtx* cctx,
                  std::vector<uint8_t>& scratch, std::vector<uint8_t>& out) {
  out.resize(ZSTD_compressBound(bytes));
  out.resize(encode_chunk(raw, bytes, elem_size, level, cctx, scratch, out.data(), out.size()));
}

void decode_chunk(const uint8_t* stored, size_t stored_bytes, uint8_t* raw, size_t bytes,
                  size_t elem_size, bool shuffled, bool compressed, ZSTD_DCtx* dctx,
                  std::vector<uint8_t>& scratch, const std::string& where) {
  const uint8_t* plain = stored;
  if (compressed) {
    const unsigned long long size = ZSTD_getFrameContentSize(stored, stored_bytes);
    if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN) {
      throw FormatError(where + ": chunk is not a zstd frame with a recorded size (corrupt data)");
    }
    if (size != bytes) {
      throw FormatError(where + ": zstd frame declares " + std::to_string(size) +
                        " bytes but the chunk holds " + std::to_string(bytes));
    }
    uint8_t* dst = raw;
    if (shuffled) {
      scratch.resize(bytes);
      dst = scratch.data();
    }
    const size_t got = ZSTD_decompressDCtx(dctx, dst, bytes, stored, stored_bytes);
    if (ZSTD_isError(got) || got != bytes) {
      throw FormatError(where + ": corrupt zstd frame (" +
                        (ZSTD_isError(got) ? ZSTD_getErrorName(got) : "short output") + ")");
    }
    if (!shuffled) return;
    plain = scratch.data();
  } else if (stored_bytes != bytes) {
    throw FormatError(where + ": unfiltered chunk has " + std::to_string(stored_bytes) +
                      " bytes but should have " + std::to_string(bytes));
  }
  if (shuffled) {
    unshuffle_bytes(plain, raw, bytes, elem_size);
  } else if (plain != raw) {
    std::memcpy(raw, plain, bytes);
  }
}

}  // namespace pmamba::ckpt
