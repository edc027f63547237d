#include "src/ckpt/codec.h"

#include <cstring>

#include "src/ckpt/errors.h"

namespace pmamba::ckpt {

void shuffle_bytes(const uint8_t* in, uint8_t* out, size_t bytes, size_t elem_size) {
  if (bytes == 0) return;  // an empty tensor's pointers may be null
  if (elem_size <= 1) {
    std::memcpy(out, in, bytes);
    return;
  }
  const size_t n = bytes / elem_size;
  for (size_t j = 0; j < elem_size; ++j) {
    uint8_t* dst = out + j * n;
    const uint8_t* src = in + j;
    for (size_t i = 0; i < n; ++i) dst[i] = src[i * elem_size];
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

void encode_chunk(const uint8_t* raw, size_t bytes, size_t elem_size, int level, ZSTD_CCtx* cctx,
                  std::vector<uint8_t>& scratch, std::vector<uint8_t>& out) {
  scratch.resize(bytes);
  shuffle_bytes(raw, scratch.data(), bytes, elem_size);
  out.resize(ZSTD_compressBound(bytes));
  // One-shot compression writes the content size into the frame header, which the
  // hdf5plugin decoder needs.
  const size_t n = ZSTD_compressCCtx(cctx, out.data(), out.size(), scratch.data(), bytes, level);
  if (ZSTD_isError(n)) throw Error(std::string("zstd compression failed: ") + ZSTD_getErrorName(n));
  out.resize(n);
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
