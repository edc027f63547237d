#include "src/ckpt/lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>

#include "src/ckpt/errors.h"
#include "src/ckpt/fault.h"
#include "src/ckpt/fs.h"

namespace pmamba::ckpt {

struct RootLock::State {
  int fd = -1;
  dev_t dev = 0;
  ino_t ino = 0;
  ~State() {
    if (fd >= 0) ::close(fd);
  }
};

namespace {

// The locks this process holds, by lock file: a second acquire of the same root (a library
// call nested in a tool that already holds it) shares the lock instead of failing on it, which
// flock would do for a second open file description.
std::mutex g_mu;
std::map<std::pair<dev_t, ino_t>, std::weak_ptr<RootLock::State>> g_held;

std::string lock_path(const std::string& root) { return fs::join(root, kLockName); }

std::string host_name() {
  char buf[256] = {0};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "an unknown host";
  return buf;
}

std::string now_utc() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::shared_ptr<RootLock::State> registered(dev_t dev, ino_t ino) {
  auto it = g_held.find({dev, ino});
  return it == g_held.end() ? nullptr : it->second.lock();
}

}  // namespace

RootLock::RootLock() = default;
RootLock::~RootLock() = default;
RootLock::RootLock(RootLock&&) noexcept = default;
RootLock& RootLock::operator=(RootLock&&) noexcept = default;

int RootLock::fd() const { return state_ ? state_->fd : -1; }

void RootLock::release() { state_.reset(); }

RootLock RootLock::acquire(const std::string& root, const std::string& tool) {
  if (fs::exists(root) && !fs::is_dir(root)) {
    throw IoError("cannot write a checkpoint to '" + root + "': it exists and is not a directory");
  }
  const bool created = !fs::exists(root);
  fs::make_dirs(root);
  try {
    return take(root, tool);
  } catch (...) {
    // A root made only to be refused is not left behind.
    if (created) {
      try {
        if (root_is_empty(root)) fs::remove_tree(root);
      } catch (...) {
      }
    }
    throw;
  }
}

RootLock RootLock::take(const std::string& root, const std::string& tool) {
  const std::string path = lock_path(root);
  for (int attempt = 0;; ++attempt) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
      throw IoError("cannot create the lock file '" + path + "': " + std::strerror(errno));
    }
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      const int e = errno;
      ::close(fd);
      throw IoError("cannot stat '" + path + "': " + std::strerror(e));
    }
    std::lock_guard<std::mutex> guard(g_mu);
    if (auto shared = registered(st.st_dev, st.st_ino)) {
      ::close(fd);
      RootLock l;
      l.state_ = shared;
      return l;
    }
    int rc = ::flock(fd, LOCK_EX | LOCK_NB);
    int err = errno;
    if (fault_injected("flock")) {
      rc = -1;
      err = ENOLCK;
    }
    if (rc != 0) {
      ::close(fd);
      if (err == EWOULDBLOCK) {
        throw LockedError("checkpoint root '" + root + "' is being written by another process (" + lock_holder(root) +
                          " holds its lock " + path + "); one writer per root: wait for it, or write elsewhere");
      }
      if (err == ENOLCK || err == ENOSYS || err == EOPNOTSUPP || err == EINVAL) {
        throw UsageError("cannot lock checkpoint root '" + root + "': its filesystem (" + fs::filesystem_type(root) +
                         ") does not support flock (" + std::strerror(err) +
                         "); without the lock two writers could destroy each other's checkpoints, so pmamba "
                         "refuses to write there");
      }
      throw IoError("cannot lock '" + path + "': " + std::strerror(err));
    }
    // The file may have been removed (an emptied output being cleaned up) between our open and
    // the flock; a lock on an unlinked file protects nothing.
    struct stat now;
    if (::stat(path.c_str(), &now) != 0 || now.st_dev != st.st_dev || now.st_ino != st.st_ino) {
      ::close(fd);
      if (attempt >= 3) throw IoError("the lock file '" + path + "' keeps being replaced; is another tool removing it?");
      continue;
    }
    // Who holds it, for the message a second writer gets. Best effort: a full disk must not
    // stop a writer that holds the lock.
    const std::string info = "pid " + std::to_string(::getpid()) + " on host " + host_name() + " (" + tool +
                             ", since " + now_utc() + ")\n";
    if (::ftruncate(fd, 0) == 0) {
      const ssize_t n = ::pwrite(fd, info.data(), info.size(), 0);
      (void)n;
    }
    auto state = std::make_shared<State>();
    state->fd = fd;
    state->dev = st.st_dev;
    state->ino = st.st_ino;
    g_held[{st.st_dev, st.st_ino}] = state;
    RootLock l;
    l.state_ = std::move(state);
    return l;
  }
}

RootLock RootLock::adopt(int fd, const std::string& root) {
  const std::string path = lock_path(root);
  struct stat a, b;
  if (fd < 0 || ::fstat(fd, &a) != 0 || ::stat(path.c_str(), &b) != 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino) {
    throw UsageError("the inherited lock descriptor " + std::to_string(fd) + " is not the lock file '" + path + "'");
  }
  // The launcher holds the lock on this open file description; taking it again through the
  // same description succeeds at once, and fails if nobody does.
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    throw UsageError("the inherited descriptor " + std::to_string(fd) + " does not hold the lock of '" + root + "'");
  }
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  std::lock_guard<std::mutex> guard(g_mu);
  auto state = registered(a.st_dev, a.st_ino);
  if (!state) {
    state = std::make_shared<State>();
    state->fd = fd;
    state->dev = a.st_dev;
    state->ino = a.st_ino;
    g_held[{a.st_dev, a.st_ino}] = state;
  } else {
    ::close(fd);
  }
  RootLock l;
  l.state_ = std::move(state);
  return l;
}

bool RootLock::held_here(const std::string& root) {
  struct stat st;
  if (::stat(lock_path(root).c_str(), &st) != 0) return false;
  std::lock_guard<std::mutex> guard(g_mu);
  return registered(st.st_dev, st.st_ino) != nullptr;
}

std::string lock_holder(const std::string& root) {
  std::string text;
  try {
    text = fs::read_file(lock_path(root), 4096);
  } catch (const Error&) {
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  return text.empty() ? "an unknown process" : fs::printable(text, 200);
}

bool root_is_empty(const std::string& root) {
  if (!fs::exists(root)) return true;
  if (!fs::is_dir(root)) return false;
  for (const auto& name : fs::list_dir(root)) {
    if (name != kLockName) return false;
  }
  return true;
}

}  // namespace pmamba::ckpt
