#include "src/pp/signals.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace pmamba::pp {

namespace {

std::atomic<int> g_stop{0};
std::atomic<pid_t> g_group{0};
std::atomic<bool> g_installed{false};
std::atomic<bool> g_forwarded{false};

// The first request goes to the stages exactly once, whether it came before or after they
// were started (sequentially consistent atomics: whichever of the two paths runs second sees
// what the first stored).
void forward_once(int sig) {
  const pid_t group = g_group.load();
  if (group > 0 && !g_forwarded.exchange(true)) ::kill(-group, sig);
}

int g_pipe[2] = {-1, -1};

struct Request {
  int sig;
  pid_t from;
  int code;
};

void on_signal(int sig, siginfo_t* info, void*) {
  const int saved = errno;
  const Request r{sig, info ? info->si_pid : 0, info ? info->si_code : 0};
  ssize_t n = ::write(g_pipe[1], &r, sizeof r);  // async-signal-safe; a full pipe drops it
  (void)n;
  errno = saved;
}

void receive(std::string tool) {
  // Requests by channel: sent by the local launcher (our parent) or by anyone else.
  int from_launcher = 0, direct = 0;
  const bool launched = std::getenv("PMAMBA_LOCAL_LAUNCH") != nullptr;
  for (;;) {
    Request r{};
    const ssize_t n = ::read(g_pipe[0], &r, sizeof r);
    if (n < 0 && errno == EINTR) continue;
    if (n != static_cast<ssize_t>(sizeof r)) return;
    const bool forwarded = launched && r.code == SI_USER && r.from == ::getppid();
    const int count = forwarded ? ++from_launcher : ++direct;
    if (count >= 2) {
      const std::string msg = tool + ": second " + signal_name(r.sig) +
                              ": stopping at once without a checkpoint of this step (the last committed one stays)\n";
      ssize_t w = ::write(2, msg.data(), msg.size());
      (void)w;
      const pid_t group = g_group.load();
      if (group > 0) ::kill(-group, SIGKILL);
      ::_exit(1);
    }
    int expected = 0;
    g_stop.compare_exchange_strong(expected, r.sig);
    forward_once(g_stop.load());
  }
}

sigset_t stop_signal_set() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGUSR1);
  return set;
}

}  // namespace

void install_stop_signals(const std::string& tool) {
  if (g_installed.exchange(true)) return;
  if (::pipe2(g_pipe, O_CLOEXEC) != 0) return;  // without a pipe the defaults stay: a signal ends the run
  std::thread(receive, tool).detach();
  struct sigaction sa {};
  sa.sa_sigaction = on_signal;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGUSR1, &sa, nullptr);
  struct sigaction old {};
  if (::sigaction(SIGINT, nullptr, &old) == 0 && old.sa_handler != SIG_IGN) ::sigaction(SIGINT, &sa, nullptr);
  // The local launcher starts its stages with these blocked (a request forwarded while a stage
  // is still loading stays pending); with the handler in place it may arrive now.
  const sigset_t set = stop_signal_set();
  ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

void block_stop_signals() {
  const sigset_t set = stop_signal_set();
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int stop_signal() { return g_stop.load(); }

std::string signal_name(int sig) {
  switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGUSR1: return "SIGUSR1";
    case SIGKILL: return "SIGKILL";
    case SIGSEGV: return "SIGSEGV";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGXFSZ: return "SIGXFSZ";
    case SIGPIPE: return "SIGPIPE";
    case SIGHUP: return "SIGHUP";
    case SIGQUIT: return "SIGQUIT";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    default: break;
  }
  return "signal " + std::to_string(sig);
}

void set_stage_group(pid_t pgid) {
  g_group.store(pgid);
  // A request that came while the stages were being started goes to them now.
  const int pending = g_stop.load();
  if (pending != 0) forward_once(pending);
}

}  // namespace pmamba::pp
