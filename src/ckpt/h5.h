// Thin RAII layer over the HDF5 C API.
//
// Handle owns one hid_t (file, group, dataset, dataspace, datatype, property list,
// attribute); it is move-only and releases the id in its destructor. Every C call that can
// fail goes through check(), which turns a failure into IoError carrying HDF5's own error
// stack text. HDF5's automatic error printing is switched off while a Silence guard lives;
// every public ckpt entry point holds one, so the library never prints.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

namespace pmamba::ckpt::h5 {

/// What H5Literate passes a callback about a link (the struct was renamed in HDF5 1.12).
#if H5_VERSION_GE(1, 12, 0)
using LinkInfo = H5L_info2_t;
#else
using LinkInfo = H5L_info_t;
#endif

class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& o) noexcept : id_(o.id_) { o.id_ = H5I_INVALID_HID; }
  Handle& operator=(Handle&& o) noexcept;
  ~Handle() { reset(); }

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset() noexcept;
  /// Closes now and reports failure (a file close is where buffered writes hit the disk).
  void close(const std::string& what);

 private:
  hid_t id_ = H5I_INVALID_HID;
};

/// Disables HDF5's automatic error printing for its lifetime (restores the previous handler).
class Silence {
 public:
  Silence();
  ~Silence();
  Silence(const Silence&) = delete;
  Silence& operator=(const Silence&) = delete;

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

/// HDF5's current error stack as one line ("" when empty).
std::string error_stack();
/// Throws IoError("<what>: <HDF5 error stack>") when id < 0; returns id otherwise.
hid_t check(hid_t id, const std::string& what);
herr_t check_status(herr_t rc, const std::string& what);

/// An object creation property list of class `cls` (H5P_FILE_CREATE, H5P_GROUP_CREATE,
/// H5P_DATASET_CREATE) whose objects store no access/modification timestamps: HDF5 otherwise
/// writes the current second into every object header, so the same content saved twice would
/// differ in its bytes. Files and groups made here use it.
Handle untimed_props(hid_t cls);
Handle create_file(const std::string& path);  // truncates; libver bounds v110 for h5py
/// The same, with every object of `threshold` bytes or more placed at a multiple of `alignment`
/// (H5Pset_alignment): what lets a writer put a dataset's bytes there with O_DIRECT.
Handle create_file(const std::string& path, size_t threshold, size_t alignment);
Handle open_file(const std::string& path);    // read-only
Handle open_file_rw(const std::string& path);

/// Creates every missing group along "a/b/c" under loc and returns the last one.
Handle create_groups(hid_t loc, const std::string& path);
Handle open_group(hid_t loc, const std::string& path);
Handle open_dataset(hid_t loc, const std::string& path);
bool exists(hid_t loc, const std::string& path);  // every component of path exists

/// Strings are written as fixed-length UTF-8 (NUL-padded): they live in the object header,
/// which HDF5 checksums, unlike variable-length strings, whose bytes sit in the global heap.
void write_attr(hid_t obj, const std::string& name, const std::string& value);
/// As write_attr, for an object just created: skips the lookup of an existing attribute to
/// replace (one name search per attribute, a visible share of a save's ~500 datasets).
void add_attr(hid_t obj, const std::string& name, const std::string& value);
void write_attr(hid_t obj, const std::string& name, int64_t value);
void write_attr_u64(hid_t obj, const std::string& name, uint64_t value);
bool has_attr(hid_t obj, const std::string& name);
/// Reads a scalar string attribute. A variable-length one is refused (FormatError) before its
/// bytes are touched unless `allow_variable`: HDF5 dereferences its global-heap entry without
/// checking it, so only files whose heaps were checked (ShardReader, version 1) or trusted
/// fixtures may allow it.
std::string read_attr_string(hid_t obj, const std::string& name, bool allow_variable = false);
int64_t read_attr_int(hid_t obj, const std::string& name);
uint64_t read_attr_u64(hid_t obj, const std::string& name);

/// Dataset shape; throws FormatError when the dataspace is not simple.
std::vector<int64_t> dataset_shape(hid_t dset);

}  // namespace pmamba::ckpt::h5
