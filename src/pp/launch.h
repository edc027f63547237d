// Local launcher: runs N copies of the current program as pipeline ranks on this machine
// (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1, MASTER_PORT set for each) and forwards
// their output line by line with a "[stage k] " prefix.
//
// The launcher owns its stages: it serves their rendezvous store itself (a stage that stops or
// dies does not take the store with it), starts each stage as its own direct child in one
// process group that it forwards stop signals to, and each stage dies with it
// (PR_SET_PDEATHSIG), so no stage outlives the launcher. When one stage fails the others get a
// grace period to notice and exit on their own, then are killed. The last line printed says
// what happened, and the exit code is the same one the failure gives at PP 1.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

namespace pmamba::pp {

struct LaunchOptions {
  int ranks = 1;
  std::vector<std::string> argv;                 // program and arguments (argv[0] resolved via /proc/self/exe)
  std::chrono::milliseconds timeout{120000};     // the stages' --timeout (the store's operations)
  std::chrono::milliseconds grace{10000};        // after a failure, how long the others get to exit
  bool progress_bar = false;                     // draw a bar from "step N/M" lines when stderr is a TTY
  int lock_fd = -1;                              // a checkpoint root's lock, handed to rank 0 (it commits)
  std::map<std::string, std::string> env;        // more variables for every rank
  std::string tool = "pmamba";                   // names the launcher in its own lines
  int dp = 1;                                    // ranks are (stage, DP index) pairs: named so
  int raw_stdout_rank = -1;                      // this rank's stdout is forwarded as it is, without the prefix
};

/// Returns 0 when every rank exits 0. Otherwise prints one line naming what happened and
/// returns: the failing stage's own exit code when a stage failed on its own (2 for bad input
/// or an unwritable checkpoint, 3 for an internal error, 1 otherwise), 1 when a stage was
/// killed by a signal or stopped answering. Throws PipelineError when a rank cannot be started.
int launch_local(const LaunchOptions& options);

/// A one-line progress bar on stderr ("[####....] step 3/10  loss 2.1  900 tok/s  0:12 elapsed
/// ETA 0:28") redrawn in place; the ETA is the steps left at the rate since the first draw.
/// clear() erases it before a line is printed, so output and bar never share a line; the
/// destructor ends it.
class ProgressBar {
 public:
  ProgressBar() = default;
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
  ~ProgressBar();
  void draw(double done, double total, const std::string& extra = "");
  void clear();

 private:
  bool drawn_ = false;
  double t0_ = -1, done0_ = 0;
};

/// A duration as the progress bar and the run summary show it: "m:ss", or "h:mm:ss" from an hour.
std::string clock_text(double seconds);

/// Path of the running executable.
std::string self_exe();

}  // namespace pmamba::pp
