#include "bench/bench_util.h"

#include "src/ckpt/fs.h"

namespace pmamba::bench {

void drop_cache_tree(const std::string& path) {
  if (ckpt::fs::is_dir(path)) {
    for (const auto& name : ckpt::fs::list_dir(path)) drop_cache_tree(ckpt::fs::join(path, name));
  } else {
    ckpt::fs::drop_cache(path);
  }
}

}  // namespace pmamba::bench
