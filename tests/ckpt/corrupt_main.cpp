// Test helper: flips one byte in the middle of a dataset's stored bytes (its first chunk when
// chunked), to simulate silent corruption of tensor data.
//   pmamba_test_corrupt SHARD.h5 /dataset/path
#include <cstdio>
#include <exception>

#include "tests/ckpt/ckpt_test_util.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s SHARD.h5 /dataset/path\n", argv[0]);
    return 2;
  }
  try {
    const auto [offset, size] = pmamba::test::dataset_file_extent(argv[1], argv[2]);
    pmamba::test::flip_byte(argv[1], offset + size / 2);
    std::printf("flipped byte %lld of %s\n", static_cast<long long>(offset + size / 2), argv[1]);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
