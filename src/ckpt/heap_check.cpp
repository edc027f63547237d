#include "src/ckpt/heap_check.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "src/ckpt/errors.h"
#include "src/ckpt/h5.h"

namespace pmamba::ckpt {

namespace {

// Layout of HDF5's global heap (file format spec, "Global Heap"), with 8-byte lengths as
// every pmamba shard has: "GCOL", version 1, 3 reserved bytes, the collection size; then
// objects, each a 16-byte header (index u16, reference count u16, 4 reserved, size u64) and
// its data padded to 8 bytes. Object 0 is the free space; its size counts its own header.
constexpr size_t kHeader = 16;
constexpr size_t kObjectHeader = 16;
constexpr uint64_t kMinCollection = 4096;  // H5HG_MINSIZE: HDF5 never makes smaller ones

uint64_t le(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

void check_heap_collection(const uint8_t* data, size_t size, const std::string& where) {
  auto bad = [&](const std::string& what) { throw FormatError(where + ": corrupt global heap: " + what); };
  if (size < kHeader || std::memcmp(data, "GCOL", 4) != 0) bad("no collection header");
  const uint64_t declared = le(data + 8, 8);
  if (declared != size) bad("collection declares " + std::to_string(declared) + " bytes, " + std::to_string(size) + " given");
  std::vector<bool> seen(65536, false);
  size_t count = 0, max_index = 0;
  size_t p = kHeader;
  while (p < size) {
    if (p + kObjectHeader > size) break;  // a tail too small for an object header is free space
    const size_t index = static_cast<size_t>(le(data + p, 2));
    const uint64_t length = le(data + p + 8, 8);
    const size_t room = size - p;
    uint64_t need;
    if (index == 0) {
      need = length;
      if (need < kObjectHeader || need > room) {
        bad("free space of " + std::to_string(length) + " bytes at byte " + std::to_string(p) + " does not fit the " +
            std::to_string(size) + "-byte collection");
      }
    } else {
      if (length > room - kObjectHeader) {
        bad("object " + std::to_string(index) + " claims " + std::to_string(length) + " bytes at byte " +
            std::to_string(p) + " of a " + std::to_string(size) + "-byte collection");
      }
      need = kObjectHeader + ((length + 7) & ~uint64_t{7});
      if (need > room) bad("object " + std::to_string(index) + " overruns its collection");
      if (seen[index]) bad("object number " + std::to_string(index) + " appears twice");
      seen[index] = true;
      ++count;
      max_index = std::max(max_index, index);
    }
    p += static_cast<size_t>(need);
  }
  if (max_index != count) {
    bad("objects are not numbered 1.." + std::to_string(count) + " (highest is " + std::to_string(max_index) + ")");
  }
}

void check_heaps_in(const std::function<size_t(int64_t, uint8_t*, size_t)>& read, int64_t file_size,
                    std::vector<Extent> skip, const std::string& where) {
  std::sort(skip.begin(), skip.end(), [](const Extent& a, const Extent& b) { return a.begin < b.begin; });
  // The gaps between raw-data extents are the file's metadata; collections live there.
  std::vector<Extent> gaps;
  int64_t at = 0;
  for (const Extent& e : skip) {
    const int64_t b = std::clamp<int64_t>(e.begin, 0, file_size), en = std::clamp<int64_t>(e.end, 0, file_size);
    if (b > at) gaps.push_back({at, b});
    at = std::max(at, en);
  }
  if (at < file_size) gaps.push_back({at, file_size});
  constexpr size_t kBlock = size_t{1} << 20;
  std::vector<uint8_t> buf;
  for (const Extent& gap : gaps) {
    int64_t pos = gap.begin;
    while (pos + 8 <= gap.end) {
      const size_t n = static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(kBlock), gap.end - pos));
      buf.resize(n);
      if (read(pos, buf.data(), n) != n) throw FormatError(where + ": cannot read bytes at " + std::to_string(pos));
      int64_t next = pos + static_cast<int64_t>(n) - 7;  // signatures may straddle blocks
      for (size_t i = 0; i + 8 <= n; ++i) {
        if (std::memcmp(buf.data() + i, "GCOL", 4) != 0 || buf[i + 4] != 1) continue;
        const int64_t start = pos + static_cast<int64_t>(i);
        uint8_t head[kHeader];
        if (read(start, head, kHeader) != kHeader) throw FormatError(where + ": truncated global heap at " + std::to_string(start));
        const uint64_t size = le(head + 8, 8);
        if (size < kMinCollection || size > static_cast<uint64_t>(file_size - start)) {
          throw FormatError(where + ": corrupt global heap: the collection at byte " + std::to_string(start) +
                            " declares " + std::to_string(size) + " bytes (the file has " + std::to_string(file_size) +
                            ")");
        }
        std::vector<uint8_t> coll(static_cast<size_t>(size));
        if (read(start, coll.data(), coll.size()) != coll.size()) {
          throw FormatError(where + ": truncated global heap at " + std::to_string(start));
        }
        check_heap_collection(coll.data(), coll.size(), where + " (global heap collection at byte " + std::to_string(start) + ")");
        next = start + static_cast<int64_t>(size);
        break;
      }
      pos = std::max(next, pos + 1);
    }
  }
}

namespace {

struct ExtentVisit {
  std::vector<Extent> extents;
  std::string error;
};

herr_t collect_extents(hid_t group, const char* name, const h5::LinkInfo* info, void* data) {
  auto* v = static_cast<ExtentVisit*>(data);
  if (info->type != H5L_TYPE_HARD) return 0;
  const hid_t obj = H5Oopen(group, name, H5P_DEFAULT);
  if (obj < 0) return -1;
  h5::Handle o(obj);
  if (H5Iget_type(obj) != H5I_DATASET) return 0;
  h5::Handle dcpl(H5Dget_create_plist(obj));
  if (!dcpl.valid()) return -1;
  const H5D_layout_t layout = H5Pget_layout(dcpl.get());
  if (layout == H5D_CONTIGUOUS) {
    const haddr_t addr = H5Dget_offset(obj);
    const hsize_t size = H5Dget_storage_size(obj);
    if (addr != HADDR_UNDEF && size > 0) {
      v->extents.push_back({static_cast<int64_t>(addr), static_cast<int64_t>(addr + size)});
    }
  } else if (layout == H5D_CHUNKED) {
    h5::Handle space(H5Dget_space(obj));
    hsize_t n = 0;
    if (!space.valid() || H5Dget_num_chunks(obj, space.get(), &n) < 0) return -1;
    if (n > (hsize_t{1} << 24)) {
      v->error = std::string("dataset '") + name + "' claims " + std::to_string(n) + " chunks";
      return -1;
    }
    std::vector<hsize_t> offset(32);
    for (hsize_t i = 0; i < n; ++i) {
      unsigned mask = 0;
      haddr_t addr = HADDR_UNDEF;
      hsize_t size = 0;
      if (H5Dget_chunk_info(obj, space.get(), i, offset.data(), &mask, &addr, &size) < 0) return -1;
      if (addr != HADDR_UNDEF && size > 0) {
        v->extents.push_back({static_cast<int64_t>(addr), static_cast<int64_t>(addr + size)});
      }
    }
  }
  return 0;
}

}  // namespace

void check_global_heaps(const std::string& path, hid_t file, int64_t file_size) {
  h5::Silence quiet;
  ExtentVisit v;
  if (H5Lvisit(file, H5_INDEX_NAME, H5_ITER_INC, collect_extents, &v) < 0) {
    const std::string stack = h5::error_stack();
    throw FormatError("shard '" + path + "': cannot list its datasets: " + (v.error.empty() ? stack : v.error));
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IoError("cannot open '" + path + "': " + std::strerror(errno));
  struct Close {
    int fd;
    ~Close() { ::close(fd); }
  } close_fd{fd};
  auto read = [fd](int64_t offset, uint8_t* dest, size_t n) -> size_t {
    size_t done = 0;
    while (done < n) {
      const ssize_t r = ::pread(fd, dest + done, n - done, offset + static_cast<int64_t>(done));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      done += static_cast<size_t>(r);
    }
    return done;
  };
  check_heaps_in(read, file_size, std::move(v.extents), "shard '" + path + "'");
}

}  // namespace pmamba::ckpt
