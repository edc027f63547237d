#include "src/ckpt/tensor_file.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <cstdio>

#include "src/ckpt/errors.h"
#include "src/ckpt/h5.h"

namespace pmamba::ckpt {

namespace {

struct TypePair {
  hid_t file;
  hid_t mem;
};

TypePair h5_type(at::ScalarType t, const std::string& name) {
  switch (t) {
    case at::kFloat: return {H5T_IEEE_F32LE, H5T_NATIVE_FLOAT};
    case at::kDouble: return {H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE};
    case at::kLong: return {H5T_STD_I64LE, H5T_NATIVE_INT64};
    case at::kInt: return {H5T_STD_I32LE, H5T_NATIVE_INT32};
    default: break;
  }
  throw UsageError("tensor '" + name + "' has unsupported dtype " + std::string(c10::toString(t)));
}

}  // namespace

void write_tensor_file(const std::string& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  h5::Silence quiet;
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  try {
    h5::Handle file = h5::create_file(tmp);
    const h5::Handle dcpl = h5::untimed_props(H5P_DATASET_CREATE);
    for (const auto& [name, tensor] : tensors) {
      const at::Tensor t = tensor.detach().cpu().contiguous();
      const TypePair ty = h5_type(t.scalar_type(), name);
      std::vector<hsize_t> dims(t.sizes().begin(), t.sizes().end());
      h5::Handle space(h5::check(t.dim() == 0 ? H5Screate(H5S_SCALAR)
                                               : H5Screate_simple(t.dim(), dims.data(), nullptr),
                                 "H5Screate"));
      // Parent groups through create_groups (no timestamps), not HDF5's intermediate groups.
      const size_t cut = name.rfind('/');
      h5::Handle parent = h5::create_groups(file.get(), cut == std::string::npos ? "/" : name.substr(0, cut));
      const std::string leaf = cut == std::string::npos ? name : name.substr(cut + 1);
      h5::Handle dset(h5::check(H5Dcreate2(parent.get(), leaf.c_str(), ty.file, space.get(), H5P_DEFAULT,
                                           dcpl.get(), H5P_DEFAULT),
                                "cannot create dataset '" + name + "' in '" + path + "'"));
      if (t.numel() > 0) {
        h5::check_status(H5Dwrite(dset.get(), ty.mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr()),
                         "cannot write dataset '" + name + "' to '" + path + "'");
      }
    }
    file.close("cannot close '" + tmp + "'");
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      throw IoError("cannot rename '" + tmp + "' to '" + path + "'");
    }
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
}

at::Tensor read_tensor_file(const std::string& path, const std::string& name) {
  h5::Silence quiet;
  h5::Handle file;
  try {
    file = h5::open_file(path);
  } catch (const IoError& e) {
    throw FormatError(e.what());
  }
  if (!h5::exists(file.get(), name)) throw FormatError("'" + path + "' has no dataset '" + name + "'");
  h5::Handle dset = h5::open_dataset(file.get(), name);
  h5::Handle ftype(h5::check(H5Dget_type(dset.get()), "H5Dget_type"));
  const H5T_class_t cls = H5Tget_class(ftype.get());
  const size_t size = H5Tget_size(ftype.get());
  at::ScalarType st;
  if (cls == H5T_FLOAT && size == 4) st = at::kFloat;
  else if (cls == H5T_FLOAT && size == 8) st = at::kDouble;
  else if (cls == H5T_INTEGER && size == 8) st = at::kLong;
  else if (cls == H5T_INTEGER && size == 4) st = at::kInt;
  else throw FormatError("'" + path + "': dataset '" + name + "' has an unsupported type");
  const std::vector<int64_t> shape = h5::dataset_shape(dset.get());
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(st));
  if (out.numel() > 0) {
    h5::check_status(H5Dread(dset.get(), h5_type(st, name).mem, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                             out.data_ptr()),
                     "cannot read dataset '" + name + "' of '" + path + "'");
  }
  return out;
}

std::vector<std::string> list_tensor_file(const std::string& path, const std::string& group) {
  h5::Silence quiet;
  h5::Handle file = h5::open_file(path);
  h5::Handle g = h5::open_group(file.get(), group);
  H5G_info_t info;
  h5::check_status(H5Gget_info(g.get(), &info), "H5Gget_info");
  std::vector<std::string> names;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t len = H5Lget_name_by_idx(g.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    std::string name(static_cast<size_t>(std::max<ssize_t>(len, 0)), '\0');
    H5Lget_name_by_idx(g.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size() + 1, H5P_DEFAULT);
    const hid_t obj = H5Oopen(g.get(), name.c_str(), H5P_DEFAULT);
    if (obj < 0) continue;
    h5::Handle owned(obj);
    if (H5Iget_type(obj) == H5I_DATASET) names.push_back(name);
  }
  return names;
}

std::string read_tensor_file_attr(const std::string& path, const std::string& name) {
  h5::Silence quiet;
  h5::Handle file = h5::open_file(path);
  h5::Handle root = h5::open_group(file.get(), "/");
  // Fixture files written by h5py store variable-length strings; they are trusted inputs.
  return h5::read_attr_string(root.get(), name, true);
}

}  // namespace pmamba::ckpt
