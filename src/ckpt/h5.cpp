#include "src/ckpt/h5.h"

#include <algorithm>
#include <cstdlib>
#include <memory>

#include "src/ckpt/errors.h"

namespace pmamba::ckpt::h5 {

Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    reset();
    id_ = o.id_;
    o.id_ = H5I_INVALID_HID;
  }
  return *this;
}

void Handle::reset() noexcept {
  if (id_ >= 0) {
    // H5Idec_ref releases any kind of id; a failure here cannot be reported from a destructor.
    Silence quiet;
    H5Idec_ref(id_);
    id_ = H5I_INVALID_HID;
  }
}

void Handle::close(const std::string& what) {
  if (id_ < 0) return;
  const hid_t id = id_;
  id_ = H5I_INVALID_HID;
  herr_t rc;
  switch (H5Iget_type(id)) {
    case H5I_FILE: rc = H5Fclose(id); break;
    case H5I_DATASET: rc = H5Dclose(id); break;
    case H5I_GROUP: rc = H5Gclose(id); break;
    default: rc = H5Idec_ref(id) < 0 ? -1 : 0; break;
  }
  check_status(rc, what);
}

Silence::Silence() {
  H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

Silence::~Silence() { H5Eset_auto2(H5E_DEFAULT, func_, data_); }

namespace {

herr_t collect(unsigned n, const H5E_error2_t* err, void* data) {
  auto* out = static_cast<std::vector<std::string>*>(data);
  if (err->desc && *err->desc) {
    std::string d = err->desc;
    for (char& ch : d) {
      if (ch == '\n' || ch == '\r') ch = ' ';
    }
    out->push_back(d);
  }
  return 0;
}

// HDF5's atexit handler closes files still open; after a failed close (e.g. a full disk during
// the final flush) HDF5 1.10 crashes in that handler. Our RAII handles close everything we
// open, so the handler is not needed; it must be disabled before the library initialises.
struct DisableAtexit {
  DisableAtexit() { H5dont_atexit(); }
} g_disable_atexit;

}  // namespace

std::string error_stack() {
  std::vector<std::string> lines;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect, &lines);
  H5Eclear2(H5E_DEFAULT);
  // The outermost line says what failed, the innermost why (e.g. errno's text); the ones in
  // between repeat both.
  if (lines.empty()) return "";
  return lines.size() == 1 ? lines.front() : lines.front() + ": " + lines.back();
}

hid_t check(hid_t id, const std::string& what) {
  if (id < 0) {
    const std::string stack = error_stack();
    throw IoError(what + (stack.empty() ? "" : ": " + stack));
  }
  return id;
}

herr_t check_status(herr_t rc, const std::string& what) {
  if (rc < 0) {
    const std::string stack = error_stack();
    throw IoError(what + (stack.empty() ? "" : ": " + stack));
  }
  return rc;
}

namespace {

Handle file_access_props() {
  Handle fapl(check(H5Pcreate(H5P_FILE_ACCESS), "H5Pcreate(file access)"));
  // The 1.10 object formats (compact groups, fixed-array chunk indexes) keep files small and
  // readable by any HDF5 >= 1.10, h5py wheels included.
  check_status(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_V110),
               "H5Pset_libver_bounds");
  return fapl;
}

}  // namespace

Handle untimed_props(hid_t cls) {
  Handle p(check(H5Pcreate(cls), "H5Pcreate"));
  check_status(H5Pset_obj_track_times(p.get(), 0), "H5Pset_obj_track_times");
  return p;
}

Handle create_file(const std::string& path) {
  Handle fapl = file_access_props();
  Handle fcpl = untimed_props(H5P_FILE_CREATE);  // the root group's header
  return Handle(check(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get()),
                      "cannot create HDF5 file '" + path + "'"));
}

Handle create_file(const std::string& path, size_t threshold, size_t alignment) {
  Handle fapl = file_access_props();
  check_status(H5Pset_alignment(fapl.get(), threshold, alignment), "H5Pset_alignment");
  Handle fcpl = untimed_props(H5P_FILE_CREATE);
  return Handle(check(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get()),
                      "cannot create HDF5 file '" + path + "'"));
}

Handle open_file(const std::string& path) {
  Handle fapl = file_access_props();
  return Handle(check(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()),
                      "cannot open HDF5 file '" + path + "'"));
}

Handle open_file_rw(const std::string& path) {
  Handle fapl = file_access_props();
  return Handle(check(H5Fopen(path.c_str(), H5F_ACC_RDWR, fapl.get()),
                      "cannot open HDF5 file '" + path + "' for writing"));
}

namespace {

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  std::string cur;
  for (char ch : path) {
    if (ch == '/') {
      if (!cur.empty()) parts.push_back(cur);
      cur.clear();
    } else {
      cur += ch;
    }
  }
  if (!cur.empty()) parts.push_back(cur);
  return parts;
}

}  // namespace

Handle create_groups(hid_t loc, const std::string& path) {
  Handle cur(check(H5Oopen(loc, ".", H5P_DEFAULT), "H5Oopen(.)"));
  Handle gcpl;
  for (const auto& part : split_path(path)) {
    const htri_t there = H5Lexists(cur.get(), part.c_str(), H5P_DEFAULT);
    check_status(there, "H5Lexists('" + part + "')");
    if (there > 0) {
      cur = Handle(check(H5Gopen2(cur.get(), part.c_str(), H5P_DEFAULT),
                         "cannot open group '" + part + "' of '" + path + "'"));
    } else {
      if (!gcpl.valid()) gcpl = untimed_props(H5P_GROUP_CREATE);
      cur = Handle(check(H5Gcreate2(cur.get(), part.c_str(), H5P_DEFAULT, gcpl.get(), H5P_DEFAULT),
                         "cannot create group '" + part + "' of '" + path + "'"));
    }
  }
  return cur;
}

bool exists(hid_t loc, const std::string& path) {
  std::string prefix;
  for (const auto& part : split_path(path)) {
    prefix += (prefix.empty() ? "" : "/") + part;
    const htri_t there = H5Lexists(loc, prefix.c_str(), H5P_DEFAULT);
    if (there <= 0) {
      H5Eclear2(H5E_DEFAULT);
      return false;
    }
  }
  return true;
}

Handle open_group(hid_t loc, const std::string& path) {
  return Handle(check(H5Gopen2(loc, path.c_str(), H5P_DEFAULT), "cannot open group '" + path + "'"));
}

Handle open_dataset(hid_t loc, const std::string& path) {
  return Handle(check(H5Dopen2(loc, path.c_str(), H5P_DEFAULT), "cannot open dataset '" + path + "'"));
}

namespace {

Handle vlen_string_type() {
  Handle t(check(H5Tcopy(H5T_C_S1), "H5Tcopy"));
  check_status(H5Tset_size(t.get(), H5T_VARIABLE), "H5Tset_size");
  check_status(H5Tset_cset(t.get(), H5T_CSET_UTF8), "H5Tset_cset");
  return t;
}

void write_scalar_attr(hid_t obj, const std::string& name, hid_t file_type, hid_t mem_type,
                       const void* value, bool fresh = false) {
  Handle space(check(H5Screate(H5S_SCALAR), "H5Screate"));
  if (!fresh && H5Aexists(obj, name.c_str()) > 0) check_status(H5Adelete(obj, name.c_str()), "H5Adelete");
  Handle attr(check(H5Acreate2(obj, name.c_str(), file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                    "cannot create attribute '" + name + "'"));
  check_status(H5Awrite(attr.get(), mem_type, value), "cannot write attribute '" + name + "'");
}

Handle open_attr(hid_t obj, const std::string& name) {
  const htri_t there = H5Aexists(obj, name.c_str());
  if (there <= 0) {
    H5Eclear2(H5E_DEFAULT);
    throw FormatError("attribute '" + name + "' is missing");
  }
  return Handle(check(H5Aopen(obj, name.c_str(), H5P_DEFAULT), "cannot open attribute '" + name + "'"));
}

void require_scalar(hid_t attr, const std::string& name) {
  Handle space(check(H5Aget_space(attr), "H5Aget_space"));
  const H5S_class_t cls = H5Sget_simple_extent_type(space.get());
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  if (!(cls == H5S_SCALAR || (cls == H5S_SIMPLE && n == 1))) {
    throw FormatError("attribute '" + name + "' is not a single value");
  }
}

void write_string_attr(hid_t obj, const std::string& name, const std::string& value, bool fresh) {
  Handle t(check(H5Tcopy(H5T_C_S1), "H5Tcopy"));
  check_status(H5Tset_size(t.get(), std::max<size_t>(1, value.size())), "H5Tset_size");
  check_status(H5Tset_strpad(t.get(), H5T_STR_NULLPAD), "H5Tset_strpad");
  check_status(H5Tset_cset(t.get(), H5T_CSET_UTF8), "H5Tset_cset");
  std::string padded = value;
  if (padded.empty()) padded.push_back('\0');
  write_scalar_attr(obj, name, t.get(), t.get(), padded.data(), fresh);
}

}  // namespace

void write_attr(hid_t obj, const std::string& name, const std::string& value) {
  write_string_attr(obj, name, value, false);
}

void add_attr(hid_t obj, const std::string& name, const std::string& value) {
  write_string_attr(obj, name, value, true);
}

void write_attr(hid_t obj, const std::string& name, int64_t value) {
  write_scalar_attr(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

void write_attr_u64(hid_t obj, const std::string& name, uint64_t value) {
  write_scalar_attr(obj, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &value);
}

bool has_attr(hid_t obj, const std::string& name) {
  const htri_t there = H5Aexists(obj, name.c_str());
  if (there < 0) H5Eclear2(H5E_DEFAULT);
  return there > 0;
}

std::string read_attr_string(hid_t obj, const std::string& name, bool allow_variable) {
  Handle attr = open_attr(obj, name);
  require_scalar(attr.get(), name);
  Handle ftype(check(H5Aget_type(attr.get()), "H5Aget_type"));
  if (H5Tget_class(ftype.get()) != H5T_STRING) {
    throw FormatError("attribute '" + name + "' is not a string");
  }
  const htri_t variable = H5Tis_variable_str(ftype.get());
  if (variable < 0) throw FormatError("attribute '" + name + "' has an unreadable string type: " + error_stack());
  if (variable > 0 && !allow_variable) {
    throw FormatError("attribute '" + name +
                      "' is a variable-length string; this format version stores fixed-length strings only "
                      "(a variable-length string's bytes live in HDF5's unchecksummed global heap)");
  }
  if (variable > 0) {
    Handle mem = vlen_string_type();
    char* p = nullptr;
    check_status(H5Aread(attr.get(), mem.get(), &p), "cannot read attribute '" + name + "'");
    std::string out = p ? p : "";
    Handle space(check(H5Aget_space(attr.get()), "H5Aget_space"));
    H5Dvlen_reclaim(mem.get(), space.get(), H5P_DEFAULT, &p);
    return out;
  }
  const size_t size = H5Tget_size(ftype.get());
  if (size == 0 || size > (size_t{64} << 20)) {
    throw FormatError("attribute '" + name + "' declares an absurd string size " + std::to_string(size));
  }
  // Read as the stored type (its character set) but NUL-padded, so no conversion drops the
  // last character to make room for a terminator.
  Handle mem(check(H5Tcopy(ftype.get()), "H5Tcopy"));
  check_status(H5Tset_strpad(mem.get(), H5T_STR_NULLPAD), "H5Tset_strpad");
  std::string buf(size, '\0');
  check_status(H5Aread(attr.get(), mem.get(), buf.data()), "cannot read attribute '" + name + "'");
  const size_t nul = buf.find('\0');
  if (nul != std::string::npos) buf.resize(nul);
  return buf;
}

int64_t read_attr_int(hid_t obj, const std::string& name) {
  Handle attr = open_attr(obj, name);
  require_scalar(attr.get(), name);
  Handle ftype(check(H5Aget_type(attr.get()), "H5Aget_type"));
  if (H5Tget_class(ftype.get()) != H5T_INTEGER) {
    throw FormatError("attribute '" + name + "' is not an integer");
  }
  int64_t v = 0;
  check_status(H5Aread(attr.get(), H5T_NATIVE_INT64, &v), "cannot read attribute '" + name + "'");
  return v;
}

uint64_t read_attr_u64(hid_t obj, const std::string& name) {
  Handle attr = open_attr(obj, name);
  require_scalar(attr.get(), name);
  Handle ftype(check(H5Aget_type(attr.get()), "H5Aget_type"));
  if (H5Tget_class(ftype.get()) != H5T_INTEGER) {
    throw FormatError("attribute '" + name + "' is not an integer");
  }
  uint64_t v = 0;
  check_status(H5Aread(attr.get(), H5T_NATIVE_UINT64, &v), "cannot read attribute '" + name + "'");
  return v;
}

std::vector<int64_t> dataset_shape(hid_t dset) {
  Handle space(check(H5Dget_space(dset), "H5Dget_space"));
  const H5S_class_t cls = H5Sget_simple_extent_type(space.get());
  if (cls == H5S_SCALAR) return {};
  if (cls != H5S_SIMPLE) throw FormatError("dataset has a null or unknown dataspace");
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0 || rank > 32) throw FormatError("dataset has an unsupported rank " + std::to_string(rank));
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return std::vector<int64_t>(dims.begin(), dims.end());
}

}  // namespace pmamba::ckpt::h5
