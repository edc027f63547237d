// Fault injection for the crash-safety and failure tests. PMAMBA_FAULT holds one spec,
// "<point>" or "<point>@<n>" (n: the stage of a writer, or the index of a thread).
//
// Kill points (fault_point): the process kills itself with SIGKILL on reaching the point.
// In commit order:
//   step-dir-made (the committing stage, after creating the step's temporary directory and
//   before the other stages are told its name)
//   shard-partial   shard-written   shard-synced   shard-renamed
//   manifest-written   manifest-renamed   dir-renamed   latest-written   latest-renamed   pruned
//
// Failure points (fault_injected): the caller fails the way the real call would.
//   thread@N   creating thread N (0-based) of a pool fails with EAGAIN
//   flock      flock fails with ENOLCK, as on a filesystem without locks
//   step-dir   creating a step directory fails (the committing stage fails on its own)
//   latest-write  writing `latest` fails after the step directory was renamed (disk full there)
//   no-room    the filesystem of a checkpoint root reports 1 KiB free
//   corrupt-replica@R  training rank R flips one bit of a weight after its first step (the
//              replica check must catch it)
//   slow-write@R  the background write of an --async-ckpt save on training rank R first sleeps
//              1 s, as on a slow disk (the tests that training overlaps the write)
//   slow-snapshot@R  the background copy of an --async-ckpt snapshot on training rank R (a CPU
//              stage) starts 1 s late (the test that the next optimizer update waits for it)
//   slow-commit   the background commit of an --async-ckpt save (stage 0) first sleeps 1 s
//              (the test that training overlaps the commit)
#pragma once

#include <string>

namespace pmamba::ckpt {

/// Kills the process if PMAMBA_FAULT names this point (and stage, when given).
void fault_point(const char* point, int stage = -1);

/// True when PMAMBA_FAULT names this failure point (and index, when the spec has one).
bool fault_injected(const char* point, int index = -1);

}  // namespace pmamba::ckpt
