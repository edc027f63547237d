// Shared helpers for the benchmarks: wall-clock timing, peak-RSS windows, medians, raw I/O
// anchors, JSON lines.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace pmamba::bench {

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// Runs a shell command (a child measuring itself in a fresh process) and returns the first line
/// it prints; throws when it prints nothing.
inline std::string child_first_line(const std::string& cmd) {
  FILE* pipe = ::popen(cmd.c_str(), "r");
  char buf[4096] = {0};
  const bool got = pipe && std::fgets(buf, sizeof buf, pipe) != nullptr;
  if (pipe) ::pclose(pipe);
  if (!got) throw std::runtime_error("child failed: " + cmd);
  return buf;
}

inline int64_t status_kb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(f, line)) {
    if (line.compare(0, n, key) == 0) return std::stoll(line.substr(n + 1));
  }
  return -1;
}

/// Resets the kernel's peak-RSS counter (VmHWM) to the current RSS.
inline void reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
}
inline double peak_rss_mb() { return status_kb("VmHWM:") / 1024.0; }
inline double rss_mb() { return status_kb("VmRSS:") / 1024.0; }

/// Runs fn, returning seconds; records the peak RSS (MB) seen during it.
inline double timed(const std::function<void()>& fn, double* peak_mb = nullptr) {
  reset_peak_rss();
  const double t0 = now_s();
  fn();
  const double dt = now_s() - t0;
  if (peak_mb) *peak_mb = peak_rss_mb();
  return dt;
}

/// Sequential write of buffers into one file with fsync: the disk's anchor for saves.
inline void raw_write(const std::string& path, const std::vector<std::pair<const void*, size_t>>& bufs) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot create " + path);
  for (const auto& [p, n] : bufs) {
    size_t done = 0;
    while (done < n) {
      const ssize_t w = ::write(fd, static_cast<const char*>(p) + done, std::min<size_t>(n - done, size_t{1} << 30));
      if (w <= 0) throw std::runtime_error("write failed on " + path);
      done += static_cast<size_t>(w);
    }
  }
  ::fsync(fd);
  ::close(fd);
}

/// Sequential read of a whole file into freshly allocated memory (as a load must allocate).
inline size_t raw_read(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open " + path);
  struct stat st;
  ::fstat(fd, &st);
  // Uninitialised, like a tensor from at::empty: the read is the first touch of each page.
  const size_t n = static_cast<size_t>(st.st_size);
  std::unique_ptr<char[]> buf(new char[n ? n : 1]);
  size_t done = 0;
  while (done < n) {
    const ssize_t r = ::read(fd, buf.get() + done, std::min<size_t>(n - done, size_t{1} << 30));
    if (r <= 0) break;
    done += static_cast<size_t>(r);
  }
  ::close(fd);
  volatile char sink = n ? buf[n / 2] : 0;
  (void)sink;
  return done;
}

inline void fsync_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

/// Evicts a file (or every file of a directory tree) from the page cache.
void drop_cache_tree(const std::string& path);

inline std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

}  // namespace pmamba::bench
