// How many threads one process computes with. at::set_num_threads sizes ATen's own pool (and
// MKL's), but a LibTorch linked to the pthreads build of OpenBLAS (Debian's) keeps a BLAS pool
// of one thread per core regardless: two pipeline stages on two cores then run four spinning
// BLAS threads and each stage computes at about half speed. set_threads sizes both.
#pragma once

namespace pmamba::kernels {

/// Intra-op threads for ATen and for the BLAS LibTorch was linked with. n >= 1.
void set_threads(int n);

/// Threads the BLAS computes a matmul with, or 0 when the BLAS does not say (not OpenBLAS).
int blas_threads();

}  // namespace pmamba::kernels
