// One writer per checkpoint root: an advisory lock (flock) on <root>/.pmamba-lock, held for as
// long as a writer may commit into the root (a whole training run, an init, a reshard). The
// kernel releases it when the holder dies, so there is no stale lock to clean up; the file
// itself stays and names the last holder (pid, host, tool) for the error message a second
// writer gets.
#pragma once

#include <memory>
#include <string>

namespace pmamba::ckpt {

inline constexpr const char* kLockName = ".pmamba-lock";

class RootLock {
 public:
  /// Takes the lock of `root`, creating the root and the lock file when needed, on an
  /// O_CLOEXEC descriptor. Throws LockedError naming the holder (pid, host, tool) when another
  /// process holds it, IoError when the root cannot be created and UsageError when its
  /// filesystem does not support locks (naming the filesystem). A process that already holds
  /// the lock of `root` gets a second handle on the same lock.
  static RootLock acquire(const std::string& root, const std::string& tool);
  /// Takes over a descriptor inherited from a parent process that holds the lock of `root`
  /// (the local launcher passes it to the stage that commits). Throws UsageError when `fd` is
  /// not that lock file or does not hold its lock.
  static RootLock adopt(int fd, const std::string& root);
  /// True when this process holds the lock of `root`.
  static bool held_here(const std::string& root);

  RootLock();
  ~RootLock();
  RootLock(RootLock&&) noexcept;
  RootLock& operator=(RootLock&&) noexcept;
  RootLock(const RootLock&) = delete;
  RootLock& operator=(const RootLock&) = delete;

  bool held() const { return state_ != nullptr; }
  /// The descriptor holding the lock (-1 when none); for handing it to a child process.
  int fd() const;
  /// Releases this handle (the lock goes when the last handle of this process goes).
  void release();

  struct State;

 private:
  static RootLock take(const std::string& root, const std::string& tool);
  std::shared_ptr<State> state_;
};

/// What the lock file says about its last holder ("pid 123 on host h (pmamba-train) since ...").
std::string lock_holder(const std::string& root);

/// True when `root` does not exist or holds nothing but its lock file.
bool root_is_empty(const std::string& root);

}  // namespace pmamba::ckpt
