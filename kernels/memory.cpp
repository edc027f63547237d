#include "kernels/memory.h"

#include <climits>
#include <cstdlib>
#include <cstring>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace pmamba::kernels {

bool retain_freed_memory() {
  const char* env = std::getenv("PMAMBA_MALLOC_RETAIN");
  if (env && std::strcmp(env, "0") == 0) return false;
#if defined(__GLIBC__)
  // A block glibc cannot place in an arena's heap (over 64 MiB in a thread's arena) still
  // falls back to mmap with M_MMAP_MAX 0, so large allocations on worker threads keep working.
  const bool no_mmap = ::mallopt(M_MMAP_MAX, 0) == 1;
  const bool no_trim = ::mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1;
  return no_mmap && no_trim;
#else
  return false;
#endif
}

}  // namespace pmamba::kernels
