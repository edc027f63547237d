// Fault injection for the crash-safety tests. When the environment variable PMAMBA_FAULT is
// "<point>" or "<point>@<stage>", the process kills itself with SIGKILL on reaching that
// point (in that stage's writer). Points, in commit order:
//   shard-partial   shard-written   shard-synced   shard-renamed
//   manifest-written   manifest-renamed   dir-renamed   latest-written   latest-renamed   pruned
#pragma once

#include <string>

namespace pmamba::ckpt {

/// Kills the process if PMAMBA_FAULT names this point (and stage, when given).
void fault_point(const char* point, int stage = -1);

}  // namespace pmamba::ckpt
