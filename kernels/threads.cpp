#include "kernels/threads.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>

#include <stdexcept>
#include <string>

namespace pmamba::kernels {
namespace {

// Looked up at run time: LibTorch may be linked to OpenBLAS, MKL or another BLAS, and only
// OpenBLAS needs (and has) these entry points.
template <typename Fn>
Fn blas_symbol(const char* name) {
  return reinterpret_cast<Fn>(::dlsym(RTLD_DEFAULT, name));
}

}  // namespace

void set_threads(int n) {
  if (n < 1) throw std::invalid_argument("thread count must be at least 1, got " + std::to_string(n));
  at::set_num_threads(n);
  if (auto set = blas_symbol<void (*)(int)>("openblas_set_num_threads")) set(n);
}

int blas_threads() {
  auto get = blas_symbol<int (*)()>("openblas_get_num_threads");
  return get ? get() : 0;
}

}  // namespace pmamba::kernels
