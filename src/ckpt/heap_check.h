// Version-1 shards keep their string attributes (format, config, dtype, digests, ...) as
// variable-length strings, whose bytes live in HDF5's global heap. The heap has no checksum,
// and HDF5 1.10 trusts the object lengths it finds there: one corrupt length makes every
// reader crash inside H5HG_read. So before HDF5 is allowed to read any variable-length string
// of a version-1 shard, every global-heap collection in the file is checked here with plain
// reads, the way HDF5 will parse it: the collection fits the file, every object fits its
// collection, free space is well-formed, and objects are numbered 1..n without gaps or
// repeats (HDF5 numbers them so, and a reference to a missing number would also crash it).
// Version-2 shards store fixed-length strings in the checksummed object headers instead.
#pragma once

#include <hdf5.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace pmamba::ckpt {

/// A byte range of a file [begin, end).
struct Extent {
  int64_t begin = 0, end = 0;
};

/// Checks one global-heap collection (`size` bytes starting with its "GCOL" header) as HDF5
/// 1.10 will parse it. `where` names it in the FormatError thrown on the first problem.
void check_heap_collection(const uint8_t* data, size_t size, const std::string& where);

/// Finds every global-heap collection outside `skip` (raw tensor data, which may hold any
/// bytes) in a file of `file_size` bytes read through `read(offset, dest, n)` (returns the
/// bytes read) and checks each. Throws FormatError naming the file offset.
void check_heaps_in(const std::function<size_t(int64_t, uint8_t*, size_t)>& read, int64_t file_size,
                    std::vector<Extent> skip, const std::string& where);

/// Both steps for an open HDF5 file: the raw-data extents come from HDF5 (which reads object
/// headers, never the global heap), the collections from pread of `path`.
void check_global_heaps(const std::string& path, hid_t file, int64_t file_size);

}  // namespace pmamba::ckpt
