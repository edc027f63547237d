// Loadable HDF5 filter plugin for zstd (id 32015): lets h5dump, h5py and any HDF5 program
// read pmamba's compressed shards with HDF5_PLUGIN_PATH=build/lib/plugin.
#include <H5PLextern.h>

#include "src/ckpt/zstd_filter.h"

extern "C" {
H5PL_type_t H5PLget_plugin_type(void) { return H5PL_TYPE_FILTER; }
const void* H5PLget_plugin_info(void) { return pmamba::ckpt::zstd_filter_class(); }
}
