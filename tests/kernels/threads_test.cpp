#include "kernels/threads.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <stdexcept>

namespace pmamba::kernels {
namespace {

// Restores the process-wide thread count the other tests in this binary run with.
struct RestoreThreads {
  int before = at::get_num_threads();
  ~RestoreThreads() { set_threads(before); }
};

TEST(Threads, SetThreadsSizesAtenAndTheBlasPool) {
  RestoreThreads restore;
  if (blas_threads() == 0) GTEST_SKIP() << "LibTorch's BLAS is not OpenBLAS; only ATen's pool is sized";
  set_threads(1);
  EXPECT_EQ(at::get_num_threads(), 1);
  EXPECT_EQ(blas_threads(), 1);
  set_threads(2);
  EXPECT_EQ(at::get_num_threads(), 2);
  EXPECT_EQ(blas_threads(), 2);
}

TEST(Threads, RejectsFewerThanOneThread) {
  EXPECT_THROW(set_threads(0), std::invalid_argument);
  EXPECT_THROW(set_threads(-3), std::invalid_argument);
}

}  // namespace
}  // namespace pmamba::kernels
