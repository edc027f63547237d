// Pipeline schedules as data: per-stage action lists for GPipe and 1F1B, a static checker
// (every send has its recv, every forward its backward, no deadlock when sends are posted
// without waiting and receives block, activation high-water mark), and a printer.
// Nothing here touches a process group, so schedules are unit-tested on their own.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace pmamba::pp {

enum class Op { kRecvAct, kForward, kSendAct, kRecvGrad, kBackward, kSendGrad };
const char* op_name(Op op);

struct Action {
  Op op;
  int mb;  // microbatch index
  bool operator==(const Action& o) const { return op == o.op && mb == o.mb; }
};

struct Schedule {
  std::string name;  // "gpipe" | "1f1b"
  int stages = 1;
  int microbatches = 1;
  std::vector<std::vector<Action>> actions;  // [stage] -> ordered actions of one training step
  bool training = true;  // false: forwards only (evaluation), no backwards expected
};

class ScheduleError : public std::runtime_error {
 public:
  explicit ScheduleError(const std::string& what) : std::runtime_error(what) {}
};

/// All forwards, then all backwards (both in microbatch order, so gradients accumulate in the
/// same order as 1F1B's and PP = 1's).
Schedule make_gpipe(int stages, int microbatches);
/// One-forward-one-backward: stage s runs min(p - s - 1, m) warm-up forwards, then alternates.
Schedule make_1f1b(int stages, int microbatches);
/// Forwards only, in microbatch order (evaluation).
Schedule make_forward_only(int stages, int microbatches);
/// "gpipe" | "1f1b"; throws ScheduleError otherwise.
Schedule make_schedule(const std::string& name, int stages, int microbatches);

struct ScheduleStats {
  std::vector<int> peak_activations;  // per stage: forward outputs alive at once (high-water mark)
  int ticks = 0;                      // length of the simulated run in compute slots
};

/// Checks the schedule and returns its statistics. Throws ScheduleError describing the first
/// problem: a send without its receive (or the reverse), a forward without its backward, a
/// backward before its forward, an action on the wrong end of the pipeline, messages taken off
/// a link in another order than they were sent (NCCL pairs them by order), or a deadlock.
ScheduleStats check_schedule(const Schedule& schedule);

/// One line per stage: "stage 1: R0 F0 S0 R1 F1 ...", plus the statistics.
std::string print_schedule(const Schedule& schedule);

/// Theoretical bubble fraction (p - 1) / (m + p - 1).
double theoretical_bubble(int stages, int microbatches);

}  // namespace pmamba::pp
