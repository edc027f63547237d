#include "src/ckpt/shard.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <future>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cerrno>
#include <nlohmann/json.hpp>

#include "src/ckpt/errors.h"
#include "src/ckpt/fault.h"
#include "src/ckpt/fs.h"
#include "src/ckpt/heap_check.h"
#include "src/ckpt/thread_pool.h"
#include "src/ckpt/zstd_filter.h"

namespace pmamba::ckpt {

namespace {

struct StorageType {
  hid_t file;
  hid_t mem;
};

// 16-bit floats are stored as little-endian uint16 (HDF5 1.10 has no bfloat16 type); the
// `dtype` attribute says how to interpret them.
StorageType storage_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return {H5T_IEEE_F32LE, H5T_NATIVE_FLOAT};
    case at::kDouble: return {H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE};
    case at::kBFloat16:
    case at::kHalf: return {H5T_STD_U16LE, H5T_NATIVE_UINT16};
    case at::kLong: return {H5T_STD_I64LE, H5T_NATIVE_INT64};
    case at::kInt: return {H5T_STD_I32LE, H5T_NATIVE_INT32};
    default: break;
  }
  throw UsageError(std::string("dtype ") + c10::toString(t) + " cannot be stored in a checkpoint");
}

// Waits for every outstanding future when destroyed, so tasks that reference local buffers
// never outlive them when an exception unwinds the writer or reader.
struct FutureGuard {
  std::deque<std::future<void>> futures;
  ~FutureGuard() {
    for (auto& f : futures) {
      if (f.valid()) f.wait();
    }
  }
};

void pread_exact(int fd, uint8_t* dest, size_t len, int64_t offset, const std::string& where) {
  size_t done = 0;
  while (done < len) {
    const ssize_t n = ::pread(fd, dest + done, len - done, offset + static_cast<int64_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw IoError(where + ": read failed: " + std::strerror(errno));
    if (n == 0) throw FormatError(where + ": the file ends before the data (truncated)");
    done += static_cast<size_t>(n);
  }
}

int pool_threads(int requested) {
  return requested > 0 ? requested : ThreadPool::default_threads();
}

// Adds the time between consecutive lap() calls to a SaveProfile field; does nothing without
// a profile, so an unprofiled save reads no clock.
class Laps {
 public:
  explicit Laps(SaveProfile* p) : p_(p), t_(p ? now() : 0) {}
  void lap(double SaveProfile::*field) {
    if (!p_) return;
    const double t = now();
    p_->*field += t - t_;
    t_ = t;
  }

 private:
  static double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }
  SaveProfile* p_;
  double t_;
};

int64_t chunk_rows(const std::vector<int64_t>& shape, size_t elem, size_t chunk_bytes) {
  size_t row_bytes = elem;
  for (size_t i = 1; i < shape.size(); ++i) row_bytes *= static_cast<size_t>(shape[i]);
  const int64_t rows = static_cast<int64_t>(std::max<size_t>(1, chunk_bytes / std::max<size_t>(row_bytes, 1)));
  return std::min(rows, shape[0]);
}

// Writes `total` bytes at `offset` of fd (HDF5 is bypassed for raw data it has placed).
void pwrite_all(int fd, const uint8_t* base, size_t total, int64_t offset, const std::string& what) {
  size_t done = 0;
  while (done < total) {
    const size_t len = std::min(total - done, size_t{1} << 30);
    const ssize_t n = ::pwrite(fd, base + done, len, offset + static_cast<int64_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw IoError("cannot write " + what + ": " + std::strerror(n < 0 ? errno : ENOSPC));
    done += static_cast<size_t>(n);
  }
}

// Uncompressed datasets of kDirectMin bytes or more start on a kDirectAlign boundary, and their
// whole blocks are written with O_DIRECT: from the tensor's own memory when it is 4096-aligned
// (an async save's snapshot is), else through an aligned bounce buffer the writer reuses. A
// buffered write puts every byte into fresh page-cache pages, and on a VM that hands idle memory
// back to the host those first touches dominate: 140 MB with fsync took 0.50 s (0.45 s of it
// system CPU) buffered and 0.07 s (0.01 s CPU) with O_DIRECT on this project's machines, and an
// asynchronous save's buffered write took that CPU from training. The tail past the last whole
// block goes through the ordinary descriptor; no page holds both kinds of write.
constexpr size_t kDirectAlign = 4096;
constexpr size_t kDirectMin = size_t{64} << 10;
constexpr size_t kBounceBytes = size_t{8} << 20;
constexpr size_t kDirectPieceBytes = size_t{64} << 20;
// How far dataset creation runs ahead of the background data writer: the datasets whose writes
// are queued, and the bytes of the copies they hold (a GPU tensor's host copy; a CPU tensor is
// written from where it lies and holds nothing).
constexpr size_t kWriteAheadDatasets = 64;
constexpr size_t kWriteAheadBytes = size_t{256} << 20;

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

struct DirectWriter {
  int fd = -1;  // O_DIRECT descriptor of the file, or -1 (not asked for, or refused: tmpfs)
  std::unique_ptr<uint8_t, FreeDeleter> bounce;

  ~DirectWriter() { close(); }
  void close() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  // Writes the whole blocks of [base, base + total) at `offset` (a multiple of kDirectAlign)
  // and returns how many bytes it wrote; 0 when it could not (the caller writes them buffered).
  // A source that is itself kDirectAlign-aligned (an async save's snapshot) goes to the disk
  // straight from where it lies; any other is copied through the bounce buffer, and `bounced`
  // counts those bytes.
  size_t write(const uint8_t* base, size_t total, int64_t offset, const std::string& what, int64_t* bounced) {
    const size_t body = total / kDirectAlign * kDirectAlign;
    if (fd < 0 || body == 0 || offset % static_cast<int64_t>(kDirectAlign) != 0) return 0;
    const bool aligned = reinterpret_cast<uintptr_t>(base) % kDirectAlign == 0;
    if (!aligned && !bounce) {
      void* p = nullptr;
      if (::posix_memalign(&p, kDirectAlign, kBounceBytes) != 0) {
        close();
        return 0;
      }
      bounce.reset(static_cast<uint8_t*>(p));
    }
    // Large enough that the syscalls cost nothing, small enough to stay under pwrite's limit.
    const size_t piece = aligned ? kDirectPieceBytes : kBounceBytes;
    for (size_t done = 0; done < body;) {
      const size_t len = std::min(piece, body - done);
      const uint8_t* src = base + done;
      if (!aligned) {
        std::memcpy(bounce.get(), src, len);
        src = bounce.get();
      }
      for (size_t put = 0; put < len;) {
        const ssize_t n = ::pwrite(fd, src + put, len - put, offset + static_cast<int64_t>(done + put));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EINVAL && done == 0 && put == 0) {
          close();  // the filesystem takes no direct I/O after all: buffered from now on
          return 0;
        }
        if (n <= 0) throw IoError("cannot write " + what + ": " + std::strerror(n < 0 ? errno : ENOSPC));
        put += static_cast<size_t>(n);
      }
      done += len;
    }
    if (!aligned && bounced) *bounced += static_cast<int64_t>(body);
    return body;
  }
};

// Whether uncompressed shards are written with O_DIRECT (PMAMBA_DIRECT_IO=0 turns it off).
bool direct_io_wanted() {
  const char* env = std::getenv("PMAMBA_DIRECT_IO");
  return !(env && std::strcmp(env, "0") == 0);
}

// One chunk's compression: its buffers and context, reused chunk after chunk.
struct ChunkJob {
  ZstdCCtxPtr cctx;
  std::vector<uint8_t> out, scratch, pad;  // grown on first use, never shrunk
  size_t size = 0;                          // bytes of `out` holding the frame
};

// One dataset's bytes and layout, known before it is created. Its digest is taken on a pool
// thread for a large tensor (a small one's here, where it costs less than handing it over: a
// third of the datasets are 8-byte step counts).
struct Prepared {
  at::Tensor data;  // contiguous on the CPU
  const uint8_t* base = nullptr;
  size_t total = 0, elem = 0;
  bool chunked = false;
  int64_t rows = 0, n_chunks = 0;
  size_t chunk_raw = 0;
  uint64_t digest = 0;
  std::future<void> digest_done;  // valid while the pool computes `digest`
  bool digest_later = false;      // the write job computes `digest` (a small tensor's) before it writes
  size_t held = 0;                // bytes of a copy made for the write (0: the caller's own tensor)
};

std::unique_ptr<Prepared> prepare(const TensorToSave& item, const WriteOptions& o, ThreadPool& pool,
                                  bool write_job) {
  auto p = std::make_unique<Prepared>();
  p->data = item.tensor.detach().cpu().contiguous();
  p->base = static_cast<const uint8_t*>(p->data.data_ptr());
  p->total = p->data.nbytes();
  p->elem = p->data.element_size();
  p->held = p->data.data_ptr() == item.tensor.data_ptr() ? 0 : p->total;
  p->chunked = o.compression.zstd && p->data.dim() > 0 && p->data.numel() > 0;
  if (p->chunked) {
    const std::vector<int64_t> shape = p->data.sizes().vec();
    p->rows = chunk_rows(shape, p->elem, o.chunk_bytes);
    p->chunk_raw = static_cast<size_t>(p->rows) * (p->total / static_cast<size_t>(shape[0]));
    p->n_chunks = (shape[0] + p->rows - 1) / p->rows;
  }
  constexpr size_t kInlineDigest = size_t{256} << 10;
  if (p->total <= kInlineDigest && write_job && !p->chunked) {
    p->digest_later = true;
  } else if (p->total <= kInlineDigest) {
    p->digest = bytes_digest(p->base, p->total);
  } else {
    Prepared* q = p.get();  // stays put: the unique_ptr moves, the object does not
    p->digest_done = pool.submit([q] { q->digest = bytes_digest(q->base, q->total); });
  }
  return p;
}

// The groups a writer creates datasets in, open for its lifetime: a model's ~500 datasets share
// ~200 parents, and creating each dataset by its full path (intermediate groups on) searched
// every level of that path again.
class GroupCache {
 public:
  explicit GroupCache(hid_t file) : file_(file) {}

  // The group at absolute `path` ("/model/layers/0/mixer"), created with its missing parents.
  hid_t get(const std::string& path) {
    auto it = open_.find(path);
    if (it != open_.end()) return it->second.get();
    // One level at a time below the cached parent; create_groups opens a group that already
    // exists instead of making it again.
    h5::Handle g = path == "/" ? h5::create_groups(file_, "/")
                               : h5::create_groups(parent_of(path), path.substr(path.rfind('/') + 1));
    return open_.emplace(path, std::move(g)).first->second.get();
  }

  // The group holding the object at absolute `path` ("/model/a/w" -> "/model/a"); the object's
  // own name is what follows the last '/'.
  hid_t parent_of(const std::string& path) {
    const size_t cut = path.rfind('/');
    return get(cut == 0 ? std::string("/") : path.substr(0, cut));
  }

 private:
  hid_t file_;
  std::unordered_map<std::string, h5::Handle> open_;
};

// Writes `items` in order, handing `wrote` what it wrote for each right after it is written,
// described as a scan of the file would find it. With zstd, chunks are compressed in the pool
// and written in file order from this thread (HDF5 is not thread-safe), at most 2 * threads in
// flight, which bounds the extra memory. The window runs across datasets, so the next tensors' chunks compress while this one's are written
// instead of the pool idling at every dataset boundary (most of a model's ~1000 datasets are a
// few chunks or smaller). `spare` holds the writer's idle chunk jobs.
//
// Uncompressed bytes go to the file from `data_writer` (one thread, so one write at a time,
// which is what the file's inode lock allows anyway) while this thread creates the next
// datasets: the HDF5 metadata of ~500 datasets was a fifth to a quarter of a save of the small
// model (140 MB) on disk and on tmpfs when the two took turns. A large tensor's
// digest is computed in the pool beside its write, a small one's by the write job; the digest
// attribute is added once both are done. Without `data_writer` every write happens on this thread.
void write_datasets(GroupCache& groups, int fd, DirectWriter& direct, const std::vector<const TensorToSave*>& items,
                    const WriteOptions& o, ThreadPool& pool, ThreadPool* data_writer,
                    std::vector<std::unique_ptr<ChunkJob>>& spare, const std::string& where,
                    const std::function<void(StoredDataset)>& wrote) {
  std::vector<std::unique_ptr<Prepared>> prep(items.size());
  // Datasets created whose bytes are queued on `data_writer` (or just written), in file order.
  struct Queued {
    size_t item;
    h5::Handle dset;
    std::future<void> done;  // invalid when the bytes were written on this thread
    StoredDataset out;
  };
  std::deque<Queued> queued;
  struct InFlight {
    size_t item;
    int64_t chunk;
    std::unique_ptr<ChunkJob> job;
    std::future<void> done;
  };
  std::deque<InFlight> inflight;
  // Declared after `prep` and `inflight`, so destroyed first: nothing the pool still runs for
  // this call outlives what it reads or writes, and the jobs go back to the spares.
  struct Drain {
    std::vector<std::unique_ptr<Prepared>>& prep;
    std::deque<InFlight>& inflight;
    std::deque<Queued>& queued;
    std::vector<std::unique_ptr<ChunkJob>>& spare;
    ~Drain() {
      for (auto& q : queued) {
        if (q.done.valid()) q.done.wait();
      }
      for (auto& f : inflight) {
        if (f.done.valid()) f.done.wait();
        spare.push_back(std::move(f.job));
      }
      for (auto& p : prep) {
        if (p && p->digest_done.valid()) p->digest_done.wait();
      }
    }
  } drain{prep, inflight, queued, spare};
  size_t prepared = 0;  // items [0, prepared) have been prepared
  auto ensure_prepared = [&](size_t i) {
    for (; prepared <= i; ++prepared) prep[prepared] = prepare(*items[prepared], o, pool, data_writer != nullptr);
  };
  const int level = o.compression.level;
  const size_t window = static_cast<size_t>(2 * pool.size());
  size_t sub_item = 0;  // the next chunk to compress, in file order
  int64_t sub_chunk = 0;
  auto fill = [&] {
    while (inflight.size() < window) {
      while (sub_item < items.size()) {
        // Look ahead only as far as the window reaches: prepared tensors are held until written.
        ensure_prepared(sub_item);
        const Prepared& p = *prep[sub_item];
        if (p.chunked && sub_chunk < p.n_chunks) break;
        ++sub_item;
        sub_chunk = 0;
      }
      if (sub_item == items.size()) return;
      if (spare.empty()) spare.push_back(std::make_unique<ChunkJob>());
      InFlight f{sub_item, sub_chunk, std::move(spare.back()), {}};
      spare.pop_back();
      ChunkJob* job = f.job.get();
      const Prepared* p = prep[sub_item].get();
      const int64_t c = sub_chunk++;
      f.done = pool.submit([job, p, c, level] {
        if (!job->cctx) job->cctx.reset(ZSTD_createCCtx());
        if (!job->cctx) throw ResourceError("cannot allocate a zstd compression context");
        const size_t bound = ZSTD_compressBound(p->chunk_raw);
        if (job->out.size() < bound) job->out.resize(bound);
        const size_t start = static_cast<size_t>(c) * p->chunk_raw;
        const size_t avail = std::min(p->chunk_raw, p->total - start);
        const uint8_t* src = p->base + start;
        if (avail < p->chunk_raw) {  // edge chunks are stored at full chunk size, zero padded
          if (job->pad.size() < p->chunk_raw) job->pad.resize(p->chunk_raw);
          std::memcpy(job->pad.data(), src, avail);
          std::memset(job->pad.data() + avail, 0, p->chunk_raw - avail);
          src = job->pad.data();
        }
        job->size = encode_chunk(src, p->chunk_raw, p->elem, level, job->cctx.get(), job->scratch, job->out.data(),
                                 job->out.size());
      });
      inflight.push_back(std::move(f));
    }
  };

  // Never filled (every byte is written); contiguous space is allocated at creation so its
  // offset is known and the bytes go out with pwrite.
  auto new_dcpl = [] {
    h5::Handle d = h5::untimed_props(H5P_DATASET_CREATE);
    h5::check_status(H5Pset_fill_time(d.get(), H5D_FILL_TIME_NEVER), "H5Pset_fill_time");
    return d;
  };
  // Finishes queued datasets from the front: every one whose bytes are written, and then more
  // (waiting for them) until at most `keep` are queued and the copies they hold fit the budget.
  size_t held = 0;
  auto finish_queued = [&](size_t keep) {
    while (!queued.empty()) {
      Queued& f = queued.front();
      const bool written = !f.done.valid() || f.done.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
      if (!written && queued.size() <= keep && held <= kWriteAheadBytes) return;
      Laps laps(o.profile);
      if (f.done.valid()) f.done.get();
      laps.lap(&SaveProfile::data_s);
      Prepared& p = *prep[f.item];
      if (p.digest_done.valid()) p.digest_done.get();
      laps.lap(&SaveProfile::digest_s);
      f.out.digest = p.digest;
      h5::add_attr(f.dset.get(), "xxh3_64", digest_hex(p.digest));
      // HDF5's own account of the bytes it stores, the number a scan reads back.
      f.out.stored_bytes = static_cast<int64_t>(H5Dget_storage_size(f.dset.get()));
      f.dset.reset();
      laps.lap(&SaveProfile::metadata_s);
      if (o.profile) ++o.profile->datasets;
      held -= p.held;
      prep[f.item].reset();  // its bytes are written: a copy made for the write is freed now
      StoredDataset out = std::move(f.out);
      queued.pop_front();
      wrote(std::move(out));
    }
  };

  const h5::Handle empty_dcpl = new_dcpl();
  const h5::Handle contiguous_dcpl = new_dcpl();
  h5::check_status(H5Pset_alloc_time(contiguous_dcpl.get(), H5D_ALLOC_TIME_EARLY), "H5Pset_alloc_time");

  for (size_t i = 0; i < items.size(); ++i) {
    Laps laps(o.profile);
    const TensorToSave& item = *items[i];
    ensure_prepared(i);
    Prepared& p = *prep[i];
    const at::Tensor& data = p.data;
    const std::string path = dataset_path(item.fqn, item.slot);
    const std::string what = where + ": dataset '" + path + "'";
    const StorageType ty = storage_type(data.scalar_type());

    const std::vector<int64_t> shape = data.sizes().vec();
    std::vector<hsize_t> dims(shape.begin(), shape.end());
    h5::Handle space(h5::check(data.dim() == 0 ? H5Screate(H5S_SCALAR)
                                               : H5Screate_simple(data.dim(), dims.data(), nullptr),
                               what + ": H5Screate"));
    h5::Handle chunked_dcpl;
    hid_t dcpl = p.total > 0 ? contiguous_dcpl.get() : empty_dcpl.get();
    if (p.chunked) {
      chunked_dcpl = new_dcpl();
      dcpl = chunked_dcpl.get();
      std::vector<hsize_t> chunk = dims;
      chunk[0] = static_cast<hsize_t>(p.rows);
      h5::check_status(H5Pset_chunk(dcpl, data.dim(), chunk.data()), what + ": H5Pset_chunk");
      h5::check_status(H5Pset_shuffle(dcpl), what + ": H5Pset_shuffle");
      const unsigned lvl = static_cast<unsigned>(level);
      h5::check_status(H5Pset_filter(dcpl, kZstdFilterId, H5Z_FLAG_MANDATORY, 1, &lvl),
                       what + ": H5Pset_filter(zstd)");
    }
    const size_t cut = path.rfind('/');
    h5::Handle dset(h5::check(H5Dcreate2(groups.parent_of(path), path.c_str() + cut + 1, ty.file,
                                         space.get(), H5P_DEFAULT, dcpl, H5P_DEFAULT),
                              "cannot create " + what));
    StoredDataset out;
    out.path = path;
    out.fqn = item.fqn;
    out.slot = item.slot;
    out.shape = shape;
    out.dtype = dtype_name(data.scalar_type());
    out.raw_bytes = static_cast<int64_t>(p.total);
    out.compressed = p.chunked;
    h5::add_attr(dset.get(), "dtype", out.dtype);
    laps.lap(&SaveProfile::metadata_s);

    std::future<void> done;
    if (!p.chunked) {
      if (p.total > 0) {
        // The space was allocated at creation; its bytes go straight to the file with pwrite
        // (HDF5 never touches a raw data region it does not fill).
        const haddr_t addr = H5Dget_offset(dset.get());
        if (addr == HADDR_UNDEF) {
          if (p.digest_later) p.digest = bytes_digest(p.base, p.total);
          h5::check_status(H5Dwrite(dset.get(), ty.mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, p.base), "cannot write " + what);
        } else {
          Prepared* q = &p;  // stays put until its Queued entry is finished
          auto job = [q, addr, fd, &direct, what, profile = o.profile] {
            if (q->digest_later) q->digest = bytes_digest(q->base, q->total);
            const size_t put = direct.write(q->base, q->total, static_cast<int64_t>(addr), what,
                                            profile ? &profile->bounce_bytes : nullptr);
            if (profile) profile->direct_bytes += static_cast<int64_t>(put);
            pwrite_all(fd, q->base + put, q->total - put, static_cast<int64_t>(addr + put), what);
          };
          if (data_writer) {
            done = data_writer->submit(std::move(job));
          } else {
            job();
          }
        }
      } else if (p.digest_later) {
        p.digest = bytes_digest(p.base, 0);
      }
    } else {
      finish_queued(0);  // datasets are reported in file order
      std::vector<hsize_t> offset(dims.size(), 0);
      for (int64_t c = 0; c < p.n_chunks; ++c) {
        fill();
        InFlight& f = inflight.front();
        if (f.item != i || f.chunk != c) throw UsageError("internal: zstd chunks out of order in " + what);
        f.done.get();
        offset[0] = static_cast<hsize_t>(c * p.rows);
        h5::check_status(H5Dwrite_chunk(dset.get(), H5P_DEFAULT, 0, offset.data(), f.job->size, f.job->out.data()),
                         "cannot write chunk " + std::to_string(c) + " of " + what);
        spare.push_back(std::move(f.job));
        inflight.pop_front();
      }
    }
    laps.lap(&SaveProfile::data_s);
    held += p.held;
    queued.push_back(Queued{i, std::move(dset), std::move(done), std::move(out)});
    finish_queued(kWriteAheadDatasets);
  }
  finish_queued(0);
}

nlohmann::json aliases_to_json(const std::vector<AliasToSave>& aliases) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& a : aliases) {
    nlohmann::json d = nlohmann::json::object();
    for (const auto& [slot, digest] : a.digests) d[slot_name(slot)] = digest_hex(digest);
    j[a.fqn] = {{"alias_of", a.alias_of}, {"file", a.target_file}, {"xxh3_64", d}};
  }
  return j;
}

Slot slot_from_name(const std::string& s) {
  if (s == "param") return Slot::kParam;
  if (s == "exp_avg") return Slot::kExpAvg;
  if (s == "exp_avg_sq") return Slot::kExpAvgSq;
  if (s == "step") return Slot::kStep;
  throw FormatError("unknown state slot '" + s + "'");
}

void write_alias_links(GroupCache& groups, const AliasToSave& a, const std::vector<Slot>& slots) {
  // Convenience for h5py/h5dump users: the alias path resolves to the stored tensor. The
  // manifest, not these links, is what pmamba reads. The link's parent comes from the writer's
  // groups (no timestamps), not from HDF5's intermediate-group creation.
  auto link = [&](const std::string& target_path, const std::string& link_path) {
    const hid_t parent = groups.parent_of(link_path);  // dataset paths are absolute: "/model/..."
    const char* leaf = link_path.c_str() + link_path.rfind('/') + 1;
    if (a.target_file.empty()) {
      h5::check_status(H5Lcreate_soft(target_path.c_str(), parent, leaf, H5P_DEFAULT, H5P_DEFAULT),
                       "cannot link '" + link_path + "'");
    } else {
      h5::check_status(H5Lcreate_external(a.target_file.c_str(), target_path.c_str(), parent, leaf, H5P_DEFAULT,
                                          H5P_DEFAULT),
                       "cannot link '" + link_path + "'");
    }
  };
  for (Slot s : slots) link(dataset_path(a.alias_of, s), dataset_path(a.fqn, s));
}

}  // namespace

struct ShardWriter::Impl {
  std::string dir, final_path, tmp;
  ShardHeader header;
  WriteOptions options;
  h5::Handle file;
  std::unique_ptr<GroupCache> groups;  // after `file`: its groups close before the file
  int fd = -1;
  DirectWriter direct;  // uncompressed shards: whole blocks with O_DIRECT where the filesystem allows
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<ThreadPool> data_writer;  // uncompressed shards: writes bytes while datasets are created
  std::vector<AliasToSave> aliases;
  WrittenShard written;
  std::vector<std::unique_ptr<ChunkJob>> spare_jobs;  // zstd: chunk buffers reused across datasets
  bool first = true;
  bool finished = false;
};

ShardWriter::ShardWriter(const std::string& dir, const ShardHeader& header, const WriteOptions& options)
    : impl_(std::make_unique<Impl>()) {
  h5::Silence quiet;
  register_zstd_filter();
  Impl& m = *impl_;
  Laps laps(options.profile);
  m.dir = dir;
  m.header = header;
  m.options = options;
  m.final_path = fs::join(dir, shard_file_name(header.stage, header.num_stages, header.part, header.parts));
  m.tmp = m.final_path + ".tmp";
  try {
    // The layout is the same whether or not O_DIRECT is used (or allowed by the filesystem).
    const bool uncompressed = !options.compression.zstd;
    m.file = uncompressed ? h5::create_file(m.tmp, kDirectMin, kDirectAlign) : h5::create_file(m.tmp);
    m.fd = ::open(m.tmp.c_str(), O_WRONLY | O_CLOEXEC);
    if (m.fd < 0) throw IoError("cannot open '" + m.tmp + "': " + std::strerror(errno));
    if (uncompressed && direct_io_wanted()) {
      m.direct.fd = ::open(m.tmp.c_str(), O_WRONLY | O_CLOEXEC | O_DIRECT);  // -1 on tmpfs: buffered
    }
    m.groups = std::make_unique<GroupCache>(m.file.get());
    h5::Handle root(h5::check(H5Gopen2(m.file.get(), "/", H5P_DEFAULT), "H5Gopen2(/)"));
    h5::write_attr(root.get(), "format", std::string(kFormatName));
    h5::write_attr(root.get(), "format_version", kFormatVersion);
    h5::write_attr(root.get(), "stage", static_cast<int64_t>(header.stage));
    h5::write_attr(root.get(), "num_stages", static_cast<int64_t>(header.num_stages));
    h5::write_attr(root.get(), "layer_begin", header.layer_begin);
    h5::write_attr(root.get(), "layer_end", header.layer_end);
    h5::write_attr(root.get(), "part", static_cast<int64_t>(header.part));
    h5::write_attr(root.get(), "num_parts", static_cast<int64_t>(header.parts));
    h5::write_attr(root.get(), "step", header.step);
    h5::write_attr(root.get(), "config", header.config_json);
    h5::write_attr(root.get(), "train", header.train_json.empty() ? std::string("{}") : header.train_json);
    h5::write_attr(root.get(), "compression", options.compression.str());
    m.pool = std::make_unique<ThreadPool>(pool_threads(options.threads));
    if (uncompressed) m.data_writer = std::make_unique<ThreadPool>(1);
  } catch (...) {
    abandon();
    throw;
  }
  laps.lap(&SaveProfile::open_s);
}

ShardWriter::~ShardWriter() {
  if (impl_ && !impl_->finished) abandon();
}

void ShardWriter::abandon() noexcept {
  Impl& m = *impl_;
  h5::Silence quiet;
  m.groups.reset();
  m.file.reset();
  m.direct.close();
  if (m.fd >= 0) ::close(m.fd);
  m.fd = -1;
  ::unlink(m.tmp.c_str());
  m.finished = true;
}

void ShardWriter::added() {
  if (impl_->first) fault_point("shard-partial", impl_->header.stage);
  impl_->first = false;
}

void ShardWriter::add(const TensorToSave& t) { add_all({t}); }

void ShardWriter::add_all(const std::vector<TensorToSave>& tensors) {
  h5::Silence quiet;
  std::vector<const TensorToSave*> items;
  items.reserve(tensors.size());
  for (const auto& t : tensors) items.push_back(&t);
  write_datasets(*impl_->groups, impl_->fd, impl_->direct, items, impl_->options, *impl_->pool,
                 impl_->data_writer.get(), impl_->spare_jobs, impl_->tmp, [this](StoredDataset d) {
                   impl_->written.datasets.push_back(std::move(d));
                   added();
                 });
}

void ShardWriter::copy(const ShardReader& src, const StoredDataset& d) {
  h5::Silence quiet;
  // H5Ocopy moves the stored bytes (compressed chunks included) without running any filter.
  // The attributes are not copied but written again: a version-1 source stores them as
  // variable-length strings, which this version does not.
  // The parent comes from the writer's groups (created once, without timestamps) rather than
  // from HDF5's intermediate-group creation.
  h5::Handle ocpl(h5::check(H5Pcreate(H5P_OBJECT_COPY), "H5Pcreate"));
  h5::check_status(H5Pset_copy_object(ocpl.get(), H5O_COPY_WITHOUT_ATTR_FLAG), "H5Pset_copy_object");
  const size_t cut = d.path.rfind('/');
  if (d.path.empty() || d.path[0] != '/' || cut + 1 == d.path.size()) {
    throw FormatError("'" + src.path() + "': dataset path '" + d.path + "' is not an absolute dataset path");
  }
  const hid_t parent = impl_->groups->parent_of(d.path);
  h5::check_status(H5Ocopy(src.file(), d.path.c_str(), parent, d.path.c_str() + cut + 1, ocpl.get(), H5P_DEFAULT),
                   "cannot copy '" + d.path + "' from '" + src.path() + "' to '" + impl_->tmp + "'");
  h5::Handle dset = h5::open_dataset(impl_->file.get(), d.path);
  h5::write_attr(dset.get(), "dtype", d.dtype);
  h5::write_attr(dset.get(), "xxh3_64", digest_hex(d.digest));
  StoredDataset out = d;
  out.stored_bytes = static_cast<int64_t>(H5Dget_storage_size(dset.get()));
  impl_->written.datasets.push_back(std::move(out));
  added();
}

void ShardWriter::add_alias(const AliasToSave& a) { impl_->aliases.push_back(a); }

std::string ShardWriter::finish() {
  h5::Silence quiet;
  Impl& m = *impl_;
  Laps laps(m.options.profile);
  try {
    for (const auto& a : m.aliases) {
      std::vector<Slot> slots;
      for (const auto& kv : a.digests) slots.push_back(kv.first);
      write_alias_links(*m.groups, a, slots);
    }
    m.groups.reset();
    {
      h5::Handle root(h5::check(H5Gopen2(m.file.get(), "/", H5P_DEFAULT), "H5Gopen2(/)"));
      h5::write_attr(root.get(), "aliases", aliases_to_json(m.aliases).dump());
    }
    laps.lap(&SaveProfile::metadata_s);
    m.file.close("cannot finish writing '" + m.tmp + "'");
    m.direct.close();
    laps.lap(&SaveProfile::close_s);
    fault_point("shard-written", m.header.stage);
    if (::fsync(m.fd) != 0) throw IoError("fsync of '" + m.tmp + "' failed: " + std::strerror(errno));
    struct stat st;
    if (::fstat(m.fd, &st) != 0) throw IoError("cannot stat '" + m.tmp + "': " + std::strerror(errno));
    ::close(m.fd);
    m.fd = -1;
    laps.lap(&SaveProfile::fsync_s);
    fault_point("shard-synced", m.header.stage);
    fs::rename_path(m.tmp, m.final_path);
    fs::fsync_path(m.dir);
    laps.lap(&SaveProfile::rename_s);
    WrittenShard& w = m.written;
    w.path = m.final_path;
    w.file = fs::basename(m.final_path);
    w.bytes = static_cast<int64_t>(st.st_size);
    w.header = m.header;
    w.header.compression = m.options.compression.str();
    w.aliases = m.aliases;
    std::sort(w.datasets.begin(), w.datasets.end(),
              [](const StoredDataset& a, const StoredDataset& b) { return a.path < b.path; });
    if (m.options.profile) ++m.options.profile->shards;
    m.finished = true;
    fault_point("shard-renamed", m.header.stage);
  } catch (...) {
    abandon();
    throw;
  }
  return m.final_path;
}

const WrittenShard& ShardWriter::written() const {
  if (!impl_->finished || impl_->written.path.empty()) {
    throw UsageError("internal: ShardWriter::written() before a successful finish()");
  }
  return impl_->written;
}

std::string write_shard(const std::string& dir, const ShardHeader& header,
                        const std::vector<TensorToSave>& tensors,
                        const std::vector<AliasToSave>& aliases, const WriteOptions& options) {
  return write_shard(dir, header, tensors, aliases, options, nullptr);
}

std::string write_shard(const std::string& dir, const ShardHeader& header,
                        const std::vector<TensorToSave>& tensors,
                        const std::vector<AliasToSave>& aliases, const WriteOptions& options,
                        WrittenShard* written) {
  ShardWriter w(dir, header, options);
  w.add_all(tensors);
  for (const auto& a : aliases) w.add_alias(a);
  std::string path = w.finish();
  if (written) *written = w.written();
  return path;
}

// ---- reading ----

bool parse_dataset_path(const std::string& path, std::string& fqn, Slot& slot) {
  auto to_fqn = [](const std::string& p) {
    std::string f = p;
    for (char& ch : f) {
      if (ch == '/') ch = '.';
    }
    return f;
  };
  auto valid = [](const std::string& f) {
    if (f.empty() || f.front() == '.' || f.back() == '.') return false;
    return f.find("..") == std::string::npos;
  };
  if (path.rfind("/model/", 0) == 0) {
    fqn = to_fqn(path.substr(7));
    slot = Slot::kParam;
    return valid(fqn);
  }
  if (path.rfind("/optim/", 0) == 0) {
    const std::string rest = path.substr(7);
    const size_t slash = rest.rfind('/');
    if (slash == std::string::npos) return false;
    const std::string leaf = rest.substr(slash + 1);
    if (leaf == "exp_avg") slot = Slot::kExpAvg;
    else if (leaf == "exp_avg_sq") slot = Slot::kExpAvgSq;
    else if (leaf == "step") slot = Slot::kStep;
    else return false;
    fqn = to_fqn(rest.substr(0, slash));
    return valid(fqn);
  }
  return false;
}

ShardReader::ShardReader(const std::string& path) : path_(path) {
  h5::Silence quiet;
  register_zstd_filter();
  if (!fs::is_file(path)) throw FormatError("shard '" + path + "' is missing");
  file_size_ = fs::file_size(path);
  try {
    file_ = h5::open_file(path);
  } catch (const IoError& e) {
    throw FormatError("shard '" + path + "' is not a readable HDF5 file (truncated or corrupt?): " + e.what());
  }
  try {
    h5::Handle root = h5::open_group(file_.get(), "/");
    // The version comes first (an integer): it decides how strings may be read at all.
    if (!h5::has_attr(root.get(), "format_version")) {
      throw FormatError("not a pmamba checkpoint shard (no format_version attribute)");
    }
    format_version_ = h5::read_attr_int(root.get(), "format_version");
    if (format_version_ > kFormatVersion) {
      throw FormatError("format_version " + std::to_string(format_version_) +
                        " is newer than this pmamba supports (" + std::to_string(kFormatVersion) + ")");
    }
    if (format_version_ < 1) throw FormatError("invalid format_version " + std::to_string(format_version_));
    variable_strings_ = format_version_ == 1;
    if (variable_strings_) check_global_heaps(path, file_.get(), file_size_);
    auto text = [&](const char* name) { return h5::read_attr_string(root.get(), name, variable_strings_); };
    if (!h5::has_attr(root.get(), "format") || text("format") != kFormatName) {
      throw FormatError("not a pmamba checkpoint shard (attribute format != \"" + std::string(kFormatName) + "\")");
    }
    auto small_int = [&](const char* name) {
      const int64_t v = h5::read_attr_int(root.get(), name);
      if (v < 0 || v > (int64_t{1} << 30)) throw FormatError(std::string("attribute '") + name + "' is out of range: " + std::to_string(v));
      return v;
    };
    header_.stage = static_cast<int>(small_int("stage"));
    header_.num_stages = static_cast<int>(small_int("num_stages"));
    header_.layer_begin = small_int("layer_begin");
    header_.layer_end = small_int("layer_end");
    if (format_version_ >= 3) {
      header_.part = static_cast<int>(small_int("part"));
      header_.parts = static_cast<int>(small_int("num_parts"));
    }
    header_.step = h5::read_attr_int(root.get(), "step");
    header_.config_json = text("config");
    header_.train_json = text("train");
    if (h5::has_attr(root.get(), "compression")) header_.compression = text("compression");
  } catch (const FormatError& e) {
    throw FormatError("shard '" + path + "': " + e.what());
  } catch (const IoError& e) {
    throw FormatError("shard '" + path + "': " + e.what());
  }
}

namespace {

struct VisitState {
  std::vector<std::string> datasets;
  std::vector<std::string> others;  // unexpected non-group objects
};

herr_t visit_link(hid_t group, const char* name, const h5::LinkInfo* info, void* data) {
  auto* st = static_cast<VisitState*>(data);
  if (info->type != H5L_TYPE_HARD) return 0;  // soft/external links: alias conveniences
  const hid_t obj = H5Oopen(group, name, H5P_DEFAULT);
  if (obj < 0) return -1;
  const H5I_type_t type = H5Iget_type(obj);
  H5Oclose(obj);
  if (type == H5I_DATASET) st->datasets.push_back(std::string("/") + name);
  else if (type != H5I_GROUP) st->others.push_back(std::string("/") + name);
  return 0;
}

std::vector<uint16_t> filter_ids(hid_t dcpl) {
  std::vector<uint16_t> ids;
  const int n = H5Pget_nfilters(dcpl);
  for (int i = 0; i < n; ++i) {
    unsigned flags = 0, cd[8];
    size_t ncd = 8;
    char name[64];
    unsigned config = 0;
    const H5Z_filter_t id = H5Pget_filter2(dcpl, static_cast<unsigned>(i), &flags, &ncd, cd, sizeof name, name, &config);
    ids.push_back(static_cast<uint16_t>(id));
  }
  return ids;
}

}  // namespace

std::vector<StoredDataset> ShardReader::scan() const {
  h5::Silence quiet;
  VisitState st;
  h5::check_status(H5Lvisit(file_.get(), H5_INDEX_NAME, H5_ITER_INC, visit_link, &st),
                   "cannot list the objects of shard '" + path_ + "'");
  if (!st.others.empty()) {
    throw FormatError("shard '" + path_ + "': unexpected object '" + st.others.front() + "'");
  }
  std::vector<StoredDataset> out;
  for (const auto& path : st.datasets) {
    StoredDataset info;
    info.path = path;
    const std::string where = "shard '" + path_ + "', dataset '" + path + "'";
    if (!parse_dataset_path(path, info.fqn, info.slot)) {
      throw FormatError(where + ": not a checkpoint dataset (expected /model/<fqn> or /optim/<fqn>/<slot>)");
    }
    h5::Handle dset;
    try {
      dset = h5::open_dataset(file_.get(), path);
    } catch (const IoError& e) {
      throw FormatError(where + ": cannot be opened (corrupt?): " + e.what());
    }
    try {
      info.dtype = h5::read_attr_string(dset.get(), "dtype", variable_strings_);
      info.digest = parse_digest_hex(h5::read_attr_string(dset.get(), "xxh3_64", variable_strings_));
      const at::ScalarType st_type = dtype_from_name(info.dtype);
      info.shape = h5::dataset_shape(dset.get());
      // Element counts are checked for overflow before anything is sized from them.
      const int64_t numel = checked_numel(info.shape, "the dataset");
      info.raw_bytes = numel * static_cast<int64_t>(dtype_size(st_type));
      h5::Handle ftype(h5::check(H5Dget_type(dset.get()), "H5Dget_type"));
      const StorageType expect = storage_type(st_type);
      if (H5Tequal(ftype.get(), expect.file) <= 0) {
        throw FormatError("stored type does not match its dtype attribute '" + info.dtype + "'");
      }
      info.stored_bytes = static_cast<int64_t>(H5Dget_storage_size(dset.get()));
      h5::Handle dcpl(h5::check(H5Dget_create_plist(dset.get()), "H5Dget_create_plist"));
      const std::vector<uint16_t> filters = filter_ids(dcpl.get());
      for (uint16_t id : filters) info.compressed = info.compressed || id == kZstdFilterId;
      // Unfiltered contiguous data must be in the file, whole: the size is known before reading.
      if (H5Pget_layout(dcpl.get()) == H5D_CONTIGUOUS && filters.empty() && info.raw_bytes > 0) {
        const haddr_t addr = H5Dget_offset(dset.get());
        if (info.stored_bytes != info.raw_bytes || addr == HADDR_UNDEF ||
            static_cast<int64_t>(addr) > file_size_ - info.raw_bytes) {
          throw FormatError("its " + std::to_string(info.raw_bytes) + " bytes are not all stored in the " +
                            std::to_string(file_size_) + "-byte file");
        }
      }
    } catch (const FormatError& e) {
      throw FormatError(where + ": " + e.what());
    }
    out.push_back(std::move(info));
  }
  std::sort(out.begin(), out.end(), [](const StoredDataset& a, const StoredDataset& b) { return a.path < b.path; });
  return out;
}

std::vector<AliasToSave> ShardReader::aliases() const {
  h5::Silence quiet;
  h5::Handle root = h5::open_group(file_.get(), "/");
  std::vector<AliasToSave> out;
  try {
    const nlohmann::json j = nlohmann::json::parse(h5::read_attr_string(root.get(), "aliases", variable_strings_));
    for (auto it = j.begin(); it != j.end(); ++it) {
      AliasToSave a;
      a.fqn = it.key();
      a.alias_of = it.value().at("alias_of").get<std::string>();
      a.target_file = it.value().at("file").get<std::string>();
      const auto& d = it.value().at("xxh3_64");
      for (auto s = d.begin(); s != d.end(); ++s) a.digests[slot_from_name(s.key())] = parse_digest_hex(s.value().get<std::string>());
      out.push_back(std::move(a));
    }
  } catch (const nlohmann::json::exception& e) {
    throw FormatError("shard '" + path_ + "': malformed aliases attribute: " + e.what());
  } catch (const FormatError& e) {
    throw FormatError("shard '" + path_ + "': aliases attribute: " + e.what());
  }
  return out;
}

void ShardReader::read(const StoredDataset& info, at::Tensor& dest, ThreadPool* pool) const {
  h5::Silence quiet;
  const std::string where = "shard '" + path_ + "', dataset '" + info.path + "'";
  if (!dest.is_contiguous() || static_cast<int64_t>(dest.nbytes()) != info.raw_bytes ||
      dest.sizes().vec() != info.shape) {
    throw UsageError(where + ": destination tensor does not match the stored shape");
  }
  const at::ScalarType st = dtype_from_name(info.dtype);
  const StorageType ty = storage_type(st);
  auto* base = static_cast<uint8_t*>(dest.data_ptr());
  const size_t total = dest.nbytes();
  if (total == 0) return;
  h5::Handle dset = h5::open_dataset(file_.get(), info.path);
  h5::Handle dcpl(h5::check(H5Dget_create_plist(dset.get()), "H5Dget_create_plist"));
  const std::vector<uint16_t> filters = filter_ids(dcpl.get());
  if (H5Pget_layout(dcpl.get()) == H5D_CONTIGUOUS && filters.empty() && pool != nullptr) {
    const haddr_t addr = H5Dget_offset(dset.get());
    if (addr != HADDR_UNDEF && static_cast<int64_t>(addr) + info.raw_bytes <= file_size_) {
      read_direct(static_cast<int64_t>(addr), base, total, *pool, where);
      return;
    }
  }
  const bool direct = H5Pget_layout(dcpl.get()) == H5D_CHUNKED && pool != nullptr && !info.shape.empty() &&
                      !filters.empty() &&
                      (filters == std::vector<uint16_t>{H5Z_FILTER_SHUFFLE, kZstdFilterId} ||
                       filters == std::vector<uint16_t>{kZstdFilterId});
  std::vector<hsize_t> chunk(info.shape.size());
  bool regular = false;
  if (direct) {
    H5Pget_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data());
    regular = chunk[0] > 0;
    for (size_t i = 1; i < chunk.size(); ++i) regular = regular && chunk[i] == static_cast<hsize_t>(info.shape[i]);
  }
  if (!direct || !regular) {
    // Any other layout goes through HDF5's own pipeline (our zstd filter is registered).
    h5::check_status(H5Dread(dset.get(), ty.mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, base), "cannot read " + where);
    return;
  }
  const bool has_shuffle = filters.size() == 2;
  const size_t elem = dtype_size(st);
  const int64_t rows = static_cast<int64_t>(chunk[0]);
  const size_t row_bytes = total / static_cast<size_t>(info.shape[0]);
  const size_t chunk_raw = static_cast<size_t>(rows) * row_bytes;
  const int64_t n_chunks = (info.shape[0] + rows - 1) / rows;
  const size_t max_stored = ZSTD_compressBound(chunk_raw) + 64;
  // Chunk addresses come from HDF5 on this thread; workers pread and decode them in parallel.
  FutureGuard inflight;
  const size_t window = static_cast<size_t>(2 * pool->size());
  std::vector<hsize_t> offset(chunk.size(), 0);
  const int fd = posix_fd();
  for (int64_t c = 0; c < n_chunks; ++c) {
    offset[0] = static_cast<hsize_t>(c * rows);
    unsigned mask = 0;
    haddr_t addr = HADDR_UNDEF;
    hsize_t nbytes = 0;
    if (H5Dget_chunk_info_by_coord(dset.get(), offset.data(), &mask, &addr, &nbytes) < 0 || addr == HADDR_UNDEF ||
        nbytes == 0) {
      h5::error_stack();
      throw FormatError(where + ": chunk " + std::to_string(c) + " is missing");
    }
    if (nbytes > max_stored || static_cast<int64_t>(addr + nbytes) > file_size_) {
      throw FormatError(where + ": chunk " + std::to_string(c) + " claims " + std::to_string(nbytes) +
                        " stored bytes at offset " + std::to_string(addr) + ", beyond the file or any encoding of " +
                        std::to_string(chunk_raw) + " bytes");
    }
    while (inflight.futures.size() >= window) {
      inflight.futures.front().get();
      inflight.futures.pop_front();
    }
    const bool shuffled = has_shuffle && !(mask & 1u);
    const bool compressed = !(mask & (has_shuffle ? 2u : 1u));
    inflight.futures.push_back(pool->submit([=] {
      thread_local ZstdDCtxPtr dctx(ZSTD_createDCtx());
      thread_local std::vector<uint8_t> stored, scratch, edge;
      const std::string label = where + " chunk " + std::to_string(c);
      stored.resize(nbytes);
      pread_exact(fd, stored.data(), nbytes, static_cast<int64_t>(addr), label);
      const size_t start = static_cast<size_t>(c) * chunk_raw;
      const size_t avail = std::min(chunk_raw, total - start);
      if (avail == chunk_raw) {
        decode_chunk(stored.data(), nbytes, base + start, chunk_raw, elem, shuffled, compressed, dctx.get(), scratch,
                     label);
      } else {
        edge.resize(chunk_raw);
        decode_chunk(stored.data(), nbytes, edge.data(), chunk_raw, elem, shuffled, compressed, dctx.get(), scratch,
                     label);
        std::memcpy(base + start, edge.data(), avail);
      }
    }));
  }
  while (!inflight.futures.empty()) {
    inflight.futures.front().get();
    inflight.futures.pop_front();
  }
}

int ShardReader::posix_fd() const {
  if (fd_ < 0) {
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw IoError("cannot open '" + path_ + "': " + std::strerror(errno));
  }
  return fd_;
}

ShardReader::~ShardReader() {
  if (fd_ >= 0) ::close(fd_);
}

void ShardReader::read_direct(int64_t offset, uint8_t* dest, size_t bytes, ThreadPool& pool,
                              const std::string& where) const {
  constexpr size_t kPiece = size_t{16} << 20;
  const int fd = posix_fd();
  FutureGuard guard;
  for (size_t start = 0; start < bytes; start += kPiece) {
    const size_t len = std::min(kPiece, bytes - start);
    guard.futures.push_back(pool.submit([=] { pread_exact(fd, dest + start, len, offset + static_cast<int64_t>(start), where); }));
  }
  while (!guard.futures.empty()) {
    guard.futures.front().get();
    guard.futures.pop_front();
  }
}

}  // namespace pmamba::ckpt
