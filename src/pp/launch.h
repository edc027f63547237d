// Local launcher: runs N copies of the current program as pipeline ranks on this machine
// (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1, MASTER_PORT set for each), forwards
// their output line by line with a "[stage k] " prefix, and returns the first failing exit
// code. When one rank fails, the others are given the communication timeout plus a grace
// period to notice and exit on their own, then killed.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace pmamba::pp {

struct LaunchOptions {
  int ranks = 1;
  std::vector<std::string> argv;        // program and arguments (argv[0] resolved via /proc/self/exe)
  std::chrono::milliseconds grace{30000};  // after a failure, how long the others get to exit
  bool progress_bar = false;            // draw a bar from "step N/M" lines when stderr is a TTY
};

/// Returns 0 when every rank exits 0, else the first non-zero exit code (128 + signal for a
/// rank killed by a signal). Throws PipelineError when a rank cannot be started.
int launch_local(const LaunchOptions& options);

/// A one-line progress bar on stderr ("[####....] step 3/10") redrawn in place. clear() erases
/// it before a line is printed, so output and bar never share a line; the destructor ends it.
class ProgressBar {
 public:
  ProgressBar() = default;
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
  ~ProgressBar();
  void draw(double done, double total);
  void clear();

 private:
  bool drawn_ = false;
};

/// Path of the running executable.
std::string self_exe();

}  // namespace pmamba::pp
