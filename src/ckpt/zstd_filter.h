// The HDF5 zstd filter (id 32015) in the wire format of the hdf5plugin project
// (silx-kit/hdf5plugin, src/HDF5Plugin-Zstandard): each chunk is one zstd frame with its
// content size recorded; cd_values[0] is the compression level. This file is compiled into
// pmamba_ckpt (registered in-process) and into the loadable plugin in build/lib/plugin/.
#pragma once

#include <hdf5.h>

namespace pmamba::ckpt {

/// The filter class (H5Z_class2_t) for H5Zregister and the plugin entry point.
const H5Z_class2_t* zstd_filter_class();

/// Registers filter 32015 with the HDF5 library once per process (idempotent).
void register_zstd_filter();

}  // namespace pmamba::ckpt
