#include "src/ckpt/zstd_filter.h"

#include <zstd.h>

#include <cstring>
#include <mutex>

namespace pmamba::ckpt {

namespace {

constexpr unsigned kFilterId = 32015;
// A frame claiming more than this is treated as corrupt rather than allocated.
constexpr unsigned long long kMaxChunkBytes = 1ull << 32;

int clamp_level(size_t cd_nelmts, const unsigned int cd_values[]) {
  int level = cd_nelmts > 0 ? static_cast<int>(cd_values[0]) : ZSTD_CLEVEL_DEFAULT;
  if (level < 1) level = 1;
  if (level > ZSTD_maxCLevel()) level = ZSTD_maxCLevel();
  return level;
}

// H5Z_func_t: returns the number of valid bytes in *buf, or 0 on failure (HDF5 then reports
// the error). Memory comes from H5allocate_memory so a plugin loaded by another HDF5 build
// frees it with the right allocator.
size_t zstd_filter(unsigned int flags, size_t cd_nelmts, const unsigned int cd_values[],
                   size_t nbytes, size_t* buf_size, void** buf) {
  if (flags & H5Z_FLAG_REVERSE) {
    const unsigned long long size = ZSTD_getFrameContentSize(*buf, nbytes);
    if (size == ZSTD_CONTENTSIZE_UNKNOWN || size == ZSTD_CONTENTSIZE_ERROR || size > kMaxChunkBytes) {
      return 0;
    }
    void* out = H5allocate_memory(size ? size : 1, false);
    if (!out) return 0;
    const size_t got = ZSTD_decompress(out, size, *buf, nbytes);
    if (ZSTD_isError(got) || got != size) {
      H5free_memory(out);
      return 0;
    }
    H5free_memory(*buf);
    *buf = out;
    *buf_size = size;
    return got;
  }
  const size_t bound = ZSTD_compressBound(nbytes);
  void* out = H5allocate_memory(bound, false);
  if (!out) return 0;
  const size_t got = ZSTD_compress(out, bound, *buf, nbytes, clamp_level(cd_nelmts, cd_values));
  if (ZSTD_isError(got)) {
    H5free_memory(out);
    return 0;
  }
  H5free_memory(*buf);
  *buf = out;
  *buf_size = bound;
  return got;
}

const H5Z_class2_t kZstdClass = {
    H5Z_CLASS_T_VERS,
    static_cast<H5Z_filter_t>(kFilterId),
    1,  // encoder present
    1,  // decoder present
    "Zstandard compression: http://www.zstd.net",
    nullptr,  // can_apply
    nullptr,  // set_local
    zstd_filter,
};

}  // namespace

const H5Z_class2_t* zstd_filter_class() { return &kZstdClass; }

void register_zstd_filter() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (H5Zfilter_avail(kFilterId) <= 0) H5Zregister(&kZstdClass);
  });
}

}  // namespace pmamba::ckpt
