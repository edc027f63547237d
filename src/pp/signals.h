// Stop requests. SIGTERM, SIGINT and SIGUSR1 (Slurm's --signal, Kubernetes, Ctrl-C) ask a
// training run to finish the step it is in, commit it and exit 0; a second request exits 1 at
// once. The handler only writes the signal to a pipe (SA_RESTART, so interrupted system calls
// resume); a thread of its own reads it and decides. A handler rather than blocking plus
// sigwaitinfo: libraries start threads before main() (OpenBLAS's pool), and a signal delivered
// to one of them with the default action would end the process.
//
// A stage started by the local launcher gets a request twice when a batch system signals every
// process of the job (directly, and forwarded by the launcher): a direct request and one
// forwarded by the launcher count as one; two of the same kind are a second request.
#pragma once

#include <sys/types.h>

#include <string>

namespace pmamba::pp {

/// Installs the handlers and starts the thread that acts on them. Call first thing in main().
/// SIGINT stays ignored when the process started with it ignored (a shell script's background
/// job, nohup). `tool` names the program in the message a second request prints.
void install_stop_signals(const std::string& tool);

/// Blocks the stop signals in the calling thread (a forked stage, before exec: a request that
/// comes while it loads stays pending until install_stop_signals).
void block_stop_signals();

/// The first stop signal received (0 when none).
int stop_signal();

/// "SIGTERM", "SIGKILL", ... ("signal N" otherwise).
std::string signal_name(int sig);

/// The local launcher's stages: requests are forwarded to this process group, and a second
/// request kills it before exiting.
void set_stage_group(pid_t pgid);

}  // namespace pmamba::pp
