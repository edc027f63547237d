// Chunk codec used outside HDF5's single-threaded filter pipeline: byte shuffle (HDF5 filter 2's
// layout) followed by one zstd frame, and the inverse. Chunks produced here are written with
// H5Dwrite_chunk; any zstd decoder (HDF5's pipeline "shuffle -> 32015", hdf5plugin) reads them.
#pragma once

#include <zstd.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace pmamba::ckpt {

struct ZstdCCtxDeleter {
  void operator()(ZSTD_CCtx* c) const noexcept { ZSTD_freeCCtx(c); }
};
struct ZstdDCtxDeleter {
  void operator()(ZSTD_DCtx* c) const noexcept { ZSTD_freeDCtx(c); }
};
using ZstdCCtxPtr = std::unique_ptr<ZSTD_CCtx, ZstdCCtxDeleter>;
using ZstdDCtxPtr = std::unique_ptr<ZSTD_DCtx, ZstdDCtxDeleter>;

/// out[j * n + i] = in[i * elem_size + j] for n = bytes / elem_size elements (HDF5 shuffle).
void shuffle_bytes(const uint8_t* in, uint8_t* out, size_t bytes, size_t elem_size);
void unshuffle_bytes(const uint8_t* in, uint8_t* out, size_t bytes, size_t elem_size);

/// Compression setting of a checkpoint: "none", "zstd" (level 3) or "zstd:N" (1..22).
struct Compression {
  bool zstd = false;
  int level = 3;
  static Compression parse(const std::string& text);  // throws UsageError
  std::string str() const;                           // "none" | "zstd:3"
};

/// shuffle + zstd of one chunk into `out` (resized to the frame size). The frame is either zstd's
/// own single pass at `level` (then byte-identical to what HDF5's pipeline stores) or, where a
/// sample of the chunk's byte planes shows the match finder gaining under 10% (random float
/// mantissas and exponents: trained weights, optimizer moments), entropy coding alone, ~2x
/// faster on one thread and no larger. Deterministic: the same chunk always gives the same bytes.
void encode_chunk(const uint8_t* raw, size_t bytes, size_t elem_size, int level, ZSTD_CCtx* cctx,
                  std::vector<uint8_t>& scratch, std::vector<uint8_t>& out);
/// The same into a caller's buffer of `capacity` >= ZSTD_compressBound(bytes) bytes (a writer
/// reuses its buffers instead of zero-filling a fresh vector per chunk); returns the frame size.
size_t encode_chunk(const uint8_t* raw, size_t bytes, size_t elem_size, int level, ZSTD_CCtx* cctx,
                    std::vector<uint8_t>& scratch, uint8_t* out, size_t capacity);

/// Inverse of encode_chunk for a chunk whose decoded size must be exactly `bytes`.
/// `shuffled` / `compressed` say which filters were applied (from the chunk's filter mask).
/// Throws FormatError (with `where` in the message) on a corrupt or mis-sized frame.
void decode_chunk(const uint8_t* stored, size_t stored_bytes, uint8_t* raw, size_t bytes,
                  size_t elem_size, bool shuffled, bool compressed, ZSTD_DCtx* dctx,
                  std::vector<uint8_t>& scratch, const std::string& where);

}  // namespace pmamba::ckpt
