// Shared GoogleTest main: pins LibTorch to one intra-op thread (CTest runs test processes in
// parallel already) unless PMAMBA_TEST_THREADS says otherwise.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cstdlib>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const char* env = std::getenv("PMAMBA_TEST_THREADS");
  at::set_num_threads(env ? std::max(1, std::atoi(env)) : 1);
  return RUN_ALL_TESTS();
}
