#include "src/pp/launch.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <regex>

#include "src/pp/errors.h"
#include "src/pp/signals.h"
#include "src/pp/transport.h"

namespace pmamba::pp {

std::string self_exe() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) throw PipelineError("cannot find the running executable (/proc/self/exe)");
  buf[n] = '\0';
  return buf;
}

namespace {

struct Child {
  pid_t pid = -1;
  int out = -1, err = -1;
  std::string out_buf, err_buf;
  bool exited = false;
  int code = 0;    // exit code (1 when killed)
  int signal = 0;  // the signal that killed it, or 0
};

void emit(const std::string& label, std::string& buf, FILE* to, bool flush_all, ProgressBar& bar) {
  size_t nl;
  while ((nl = buf.find('\n')) != std::string::npos || (flush_all && !buf.empty())) {
    const std::string line = nl == std::string::npos ? buf : buf.substr(0, nl);
    buf.erase(0, nl == std::string::npos ? buf.size() : nl + 1);
    bar.clear();
    if (label.empty()) {
      std::fprintf(to, "%s\n", line.c_str());
    } else {
      std::fprintf(to, "[%s] %s\n", label.c_str(), line.c_str());
    }
  }
  std::fflush(to);
}

}  // namespace

ProgressBar::~ProgressBar() {
  if (drawn_) std::fprintf(stderr, "\n");
}

std::string clock_text(double seconds) {
  const long long t = std::llround(std::max(0.0, seconds));
  char b[48];
  if (t >= 3600) {
    std::snprintf(b, sizeof b, "%lld:%02lld:%02lld", t / 3600, t / 60 % 60, t % 60);
  } else {
    std::snprintf(b, sizeof b, "%lld:%02lld", t / 60, t % 60);
  }
  return b;
}

void ProgressBar::draw(double done, double total, const std::string& extra) {
  const double now = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  if (t0_ < 0) {
    t0_ = now;
    done0_ = done;
  }
  std::string tail = extra.empty() ? "" : "  " + extra;
  tail += "  " + clock_text(now - t0_) + " elapsed";
  if (done > done0_ && now > t0_) tail += "  ETA " + clock_text((total - done) * (now - t0_) / (done - done0_));
  const int width = 30, fill = std::clamp(static_cast<int>(width * done / std::max(total, 1.0)), 0, width);
  std::fprintf(stderr, "\r\033[K[%s%s] step %.0f/%.0f%s", std::string(fill, '#').c_str(),
               std::string(width - fill, '.').c_str(), done, total, tail.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressBar::clear() {
  if (!drawn_) return;
  std::fprintf(stderr, "\r\033[K");
  std::fflush(stderr);
  drawn_ = false;
}

int launch_local(const LaunchOptions& o) {
  auto label = [&](int r) { return (o.dp > 1 ? "rank " : "stage ") + std::to_string(r); };
  // The label of one of a rank's streams: none for the output a tool passes through unchanged.
  auto stream_label = [&](int r, bool is_err) { return !is_err && r == o.raw_stdout_rank ? std::string() : label(r); };
  LauncherStore store(o.timeout);
  std::vector<Child> kids(static_cast<size_t>(o.ranks));
  const std::string exe = self_exe();
  const pid_t launcher = ::getpid();
  pid_t group = 0;
  for (int r = 0; r < o.ranks; ++r) {
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
      throw PipelineError("cannot create pipes for the ranks: " + std::string(std::strerror(errno)));
    }
    const pid_t pid = ::fork();
    if (pid < 0) {
      if (group > 0) ::kill(-group, SIGKILL);
      throw PipelineError("cannot start rank " + std::to_string(r) + ": " + std::strerror(errno));
    }
    if (pid == 0) {
      // A stage never outlives its launcher: it is killed when the launcher dies, and one
      // whose launcher died before this line exits at once.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != launcher) ::_exit(1);
      block_stop_signals();
      ::setpgid(0, group);
      const int devnull = ::open("/dev/null", O_RDONLY);
      if (devnull >= 0) ::dup2(devnull, 0);
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(o.ranks).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(store.port()).c_str(), 1);
      ::setenv("PMAMBA_LOCAL_LAUNCH", "1", 1);
      ::setenv("PMAMBA_STORE_HOST", "launcher", 1);
      for (const auto& [k, v] : o.env) ::setenv(k.c_str(), v.c_str(), 1);
      if (r == 0 && o.lock_fd >= 0) {
        // The stage that commits holds the checkpoint root's lock too (the same open file).
        ::fcntl(o.lock_fd, F_SETFD, 0);
        ::setenv("PMAMBA_LOCK_FD", std::to_string(o.lock_fd).c_str(), 1);
      } else {
        ::unsetenv("PMAMBA_LOCK_FD");
      }
      // Started under a launcher of one process (torchrun --nproc-per-node 1): these stages
      // meet at our own store, not the agent's.
      ::unsetenv("TORCHELASTIC_USE_AGENT_STORE");
      ::unsetenv("TORCHELASTIC_RESTART_COUNT");
      std::vector<char*> args;
      args.push_back(const_cast<char*>(exe.c_str()));
      for (size_t i = 1; i < o.argv.size(); ++i) args.push_back(const_cast<char*>(o.argv[i].c_str()));
      args.push_back(nullptr);
      ::execv(exe.c_str(), args.data());
      std::fprintf(stderr, "cannot exec %s: %s\n", exe.c_str(), std::strerror(errno));
      ::_exit(127);
    }
    // Both sides set the group, so it exists whichever runs first.
    if (group == 0) group = pid;
    ::setpgid(pid, group);
    if (r == 0) set_stage_group(group);
    ::close(out[1]);
    ::close(err[1]);
    kids[r].pid = pid;
    kids[r].out = out[0];
    kids[r].err = err[0];
  }
  auto failed_at = std::chrono::steady_clock::time_point::max();
  bool failed = false;
  std::vector<bool> killed_by_us(static_cast<size_t>(o.ranks), false);
  ProgressBar bar;
  const std::regex step_re(R"(^step (\d+)/(\d+)  (loss \S+).*  (\S+ tok/s))");
  int open_fds = 2 * o.ranks, alive = o.ranks;
  while (open_fds > 0 || alive > 0) {
    std::vector<pollfd> fds;
    std::vector<std::pair<int, bool>> who;  // (rank, is_err)
    for (int r = 0; r < o.ranks; ++r) {
      if (kids[r].out >= 0) {
        fds.push_back({kids[r].out, POLLIN, 0});
        who.emplace_back(r, false);
      }
      if (kids[r].err >= 0) {
        fds.push_back({kids[r].err, POLLIN, 0});
        who.emplace_back(r, true);
      }
    }
    if (!fds.empty()) ::poll(fds.data(), fds.size(), 200);
    else ::usleep(50000);
    for (size_t i = 0; i < fds.size(); ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      auto [r, is_err] = who[i];
      char buf[65536];
      const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      std::string& acc = is_err ? kids[r].err_buf : kids[r].out_buf;
      if (n <= 0) {
        emit(stream_label(r, is_err), acc, is_err ? stderr : stdout, true, bar);
        ::close(fds[i].fd);
        (is_err ? kids[r].err : kids[r].out) = -1;
        --open_fds;
        continue;
      }
      acc.append(buf, static_cast<size_t>(n));
      if (o.progress_bar && !is_err && r == o.ranks - 1) {
        std::smatch m;
        const size_t nl = acc.rfind('\n');
        std::string last = nl == std::string::npos ? "" : acc.substr(0, nl);
        const size_t prev = last.rfind('\n');
        last = prev == std::string::npos ? last : last.substr(prev + 1);
        emit(stream_label(r, false), acc, stdout, false, bar);
        // Step lines are ~100 characters; a longer line is not one (libstdc++'s regex recurses
        // once per character it matches, so an unbounded line could overflow the stack).
        if (last.size() <= 1024 && std::regex_search(last, m, step_re)) {
          bar.draw(std::strtod(m[1].str().c_str(), nullptr), std::strtod(m[2].str().c_str(), nullptr),
                   m[3].str() + "  " + m[4].str());
        }
      } else {
        emit(stream_label(r, is_err), acc, is_err ? stderr : stdout, false, bar);
      }
    }
    for (int r = 0; r < o.ranks; ++r) {
      if (kids[r].exited) continue;
      int status = 0;
      if (::waitpid(kids[r].pid, &status, WNOHANG) == kids[r].pid) {
        kids[r].exited = true;
        --alive;
        kids[r].signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
        kids[r].code = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
        if (kids[r].code != 0 || kids[r].signal != 0) {
          store.report_gone(r, kids[r].signal != 0 ? "the launcher saw it killed by " + signal_name(kids[r].signal)
                                                   : "the launcher saw it exit with code " + std::to_string(kids[r].code));
          if (!failed) {
            failed = true;
            failed_at = std::chrono::steady_clock::now();
          }
        }
      }
    }
    if (failed && alive > 0 && std::chrono::steady_clock::now() - failed_at > o.grace) {
      for (auto& k : kids) {
        if (!k.exited) {
          const int r = static_cast<int>(&k - kids.data());
          bar.clear();
          std::fprintf(stderr, "%s: %s did not exit within %lld s of another stage's failure; killing it\n",
                       o.tool.c_str(), rank_name(r, o.dp).c_str(), static_cast<long long>(o.grace.count() / 1000));
          killed_by_us[static_cast<size_t>(r)] = true;
          ::kill(k.pid, SIGKILL);
        }
      }
      failed_at = std::chrono::steady_clock::time_point::max();
    }
  }
  if (!failed) return 0;
  // One line that says what happened, the same whatever order the stages went down in: a
  // stage's own failure first (with its own exit code), then a stage killed by a signal, then
  // what the stages that stopped because of another one reported (it names that stage).
  bar.clear();
  std::vector<std::string> reports(static_cast<size_t>(o.ranks));
  std::vector<bool> own(static_cast<size_t>(o.ranks), false);
  for (int r = 0; r < o.ranks; ++r) {
    bool is_own = false;
    reports[r] = store.report(r, &is_own);
    own[r] = is_own && !reports[r].empty();
  }
  for (int r = 0; r < o.ranks; ++r) {
    if (own[r]) {
      std::fprintf(stderr, "%s: %s failed: %s\n", o.tool.c_str(), rank_name(r, o.dp).c_str(), reports[r].c_str());
      return kids[r].code != 0 ? kids[r].code : 1;
    }
  }
  for (int r = 0; r < o.ranks; ++r) {
    if (kids[r].signal != 0 && !killed_by_us[r]) {
      std::fprintf(stderr, "%s: %s was killed by %s\n", o.tool.c_str(), rank_name(r, o.dp).c_str(), signal_name(kids[r].signal).c_str());
      return 1;
    }
  }
  for (int r = 0; r < o.ranks; ++r) {
    if (!reports[r].empty()) {
      std::fprintf(stderr, "%s: %s\n", o.tool.c_str(), reports[r].c_str());
      return 1;
    }
  }
  for (int r = 0; r < o.ranks; ++r) {
    if (kids[r].code != 0) {
      std::fprintf(stderr, "%s: %s exited with code %d\n", o.tool.c_str(), rank_name(r, o.dp).c_str(), kids[r].code);
      return kids[r].code;
    }
  }
  for (int r = 0; r < o.ranks; ++r) {
    if (killed_by_us[r]) {
      std::fprintf(stderr, "%s: %s stopped answering and was killed\n", o.tool.c_str(), rank_name(r, o.dp).c_str());
      return 1;
    }
  }
  return 1;
}

}  // namespace pmamba::pp
