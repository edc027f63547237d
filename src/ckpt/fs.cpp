#include "src/ckpt/fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <nlohmann/json.hpp>

#include "src/ckpt/errors.h"
#include "src/ckpt/fault.h"

namespace pmamba::ckpt::fs {

namespace {

[[noreturn]] void fail(const std::string& what) {
  throw IoError(what + ": " + std::strerror(errno));
}

struct Fd {
  int fd;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

bool exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

bool is_dir(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

int64_t file_size(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return -1;
  return static_cast<int64_t>(st.st_size);
}

void make_dirs(const std::string& path) {
  if (path.empty() || is_dir(path)) return;
  const std::string up = parent(path);
  if (!up.empty() && up != path) make_dirs(up);
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) fail("cannot create directory '" + path + "'");
  if (!is_dir(path)) throw IoError("cannot create directory '" + path + "': a file is in the way");
}

void remove_file(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) fail("cannot remove '" + path + "'");
}

void remove_tree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    for (const auto& name : list_dir(path)) remove_tree(join(path, name));
    if (::rmdir(path.c_str()) != 0 && errno != ENOENT) fail("cannot remove directory '" + path + "'");
  } else {
    remove_file(path);
  }
}

void fsync_path(const std::string& path) {
  Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (f.fd < 0) fail("cannot open '" + path + "' to fsync");
  if (::fsync(f.fd) != 0) fail("fsync of '" + path + "' failed");
}

void rename_path(const std::string& from, const std::string& to) {
  if (std::rename(from.c_str(), to.c_str()) != 0) {
    fail("cannot rename '" + from + "' to '" + to + "'");
  }
}

void exchange_paths(const std::string& a, const std::string& b) {
  if (::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) != 0) {
    fail("cannot exchange '" + a + "' and '" + b + "'");
  }
}

void write_file_atomic(const std::string& path, const std::string& data) {
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  {
    Fd f(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (f.fd < 0) fail("cannot create '" + tmp + "'");
    size_t done = 0;
    while (done < data.size()) {
      const ssize_t n = ::write(f.fd, data.data() + done, data.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        const int saved = errno;
        ::unlink(tmp.c_str());
        errno = saved;
        fail("cannot write '" + tmp + "'");
      }
      done += static_cast<size_t>(n);
    }
    if (::fsync(f.fd) != 0) {
      const int saved = errno;
      ::unlink(tmp.c_str());
      errno = saved;
      fail("fsync of '" + tmp + "' failed");
    }
  }
  rename_path(tmp, path);
  fsync_path(parent(path).empty() ? "." : parent(path));
}

namespace {

std::string kind_of(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

}  // namespace

int open_regular(const std::string& path, int64_t max_bytes, int64_t* size) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
  Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (f.fd < 0) {
    if (errno == ELOOP) throw FormatError("'" + path + "' is a symbolic link loop");
    fail("cannot open '" + path + "'");
  }
  struct stat st;
  if (::fstat(f.fd, &st) != 0) fail("cannot stat '" + path + "'");
  if (!S_ISREG(st.st_mode)) throw FormatError("'" + path + "' is " + kind_of(st.st_mode) + ", not a regular file");
  if (st.st_size > max_bytes) {
    throw FormatError("'" + path + "' is " + std::to_string(st.st_size) + " bytes, more than the " +
                      std::to_string(max_bytes) + " allowed for it");
  }
  const int flags = ::fcntl(f.fd, F_GETFL);
  if (flags >= 0) ::fcntl(f.fd, F_SETFL, flags & ~O_NONBLOCK);
  if (size) *size = static_cast<int64_t>(st.st_size);
  const int fd = f.fd;
  f.fd = -1;
  return fd;
}

std::string read_file(const std::string& path, int64_t max_bytes) {
  int64_t size = 0;
  Fd f(open_regular(path, max_bytes, &size));
  std::string out(static_cast<size_t>(size), '\0');
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::read(f.fd, out.data() + done, out.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("cannot read '" + path + "'");
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  out.resize(done);
  return out;
}

std::vector<std::string> list_dir(const std::string& path) {
  DIR* d = ::opendir(path.c_str());
  if (!d) fail("cannot list directory '" + path + "'");
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

std::string join(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  return a.back() == '/' ? a + b : a + "/" + b;
}

std::string parent(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const size_t slash = p.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return p.substr(0, slash);
}

std::string basename(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const size_t slash = p.rfind('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}

std::string absolute_path(const std::string& path) {
  std::string p = path;
  if (p.empty()) p = ".";
  if (p[0] != '/') {
    char cwd[PATH_MAX];
    if (!::getcwd(cwd, sizeof cwd)) fail("cannot read the current directory");
    p = join(cwd, p);
  }
  // Resolve the longest existing prefix with realpath; normalise what follows by hand.
  std::vector<std::string> rest;
  std::string head = p;
  char buf[PATH_MAX];
  while (!::realpath(head.c_str(), buf)) {
    if (head == "/" || head.empty()) {
      buf[0] = '/';
      buf[1] = '\0';
      break;
    }
    rest.push_back(basename(head));
    head = parent(head);
  }
  std::vector<std::string> parts;
  auto push = [&](const std::string& name) {
    if (name.empty() || name == ".") return;
    if (name == "..") {
      if (!parts.empty()) parts.pop_back();
      return;
    }
    parts.push_back(name);
  };
  std::string resolved = buf;
  size_t start = 1;
  while (start <= resolved.size()) {
    const size_t slash = resolved.find('/', start);
    push(resolved.substr(start, slash == std::string::npos ? std::string::npos : slash - start));
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  for (auto it = rest.rbegin(); it != rest.rend(); ++it) push(*it);
  std::string out;
  for (const auto& part : parts) out += "/" + part;
  return out.empty() ? "/" : out;
}

bool within(const std::string& path, const std::string& dir) {
  if (dir == "/") return true;
  return path == dir || (path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 && path[dir.size()] == '/');
}

namespace {

std::string existing_ancestor(const std::string& path) {
  std::string p = absolute_path(path);
  while (!exists(p) && p != "/") p = parent(p);
  return p;
}

}  // namespace

int64_t free_bytes(const std::string& path) {
  if (fault_injected("no-room")) return 1024;
  struct statvfs st;
  if (::statvfs(existing_ancestor(path).c_str(), &st) != 0) return -1;
  return static_cast<int64_t>(st.f_bavail) * static_cast<int64_t>(st.f_frsize);
}

std::string filesystem_type(const std::string& path) {
  struct statfs st;
  if (::statfs(existing_ancestor(path).c_str(), &st) != 0) return "an unknown filesystem";
  switch (static_cast<unsigned long>(st.f_type)) {
    case EXT4_SUPER_MAGIC: return "ext4";
    case XFS_SUPER_MAGIC: return "xfs";
    case BTRFS_SUPER_MAGIC: return "btrfs";
    case TMPFS_MAGIC: return "tmpfs";
    case OVERLAYFS_SUPER_MAGIC: return "overlayfs";
    case NFS_SUPER_MAGIC: return "nfs";
    case 0x0bd00bd0UL: return "lustre";
    case 0xff534d42UL: return "cifs";
    case 0xfe534d42UL: return "smb2";
    case 0x65735546UL: return "fuse";
    case V9FS_MAGIC: return "9p";
    case 0x47504653UL: return "gpfs";
    case 0x00c36400UL: return "ceph";
    default: break;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "type 0x%lx", static_cast<unsigned long>(st.f_type));
  return buf;
}

bool valid_utf8(const std::string& s) {
  // Exactly what a JSON string may hold: the serializer's own check.
  try {
    (void)nlohmann::json(s).dump();
    return true;
  } catch (const nlohmann::json::type_error&) {
    return false;
  }
}

std::string printable(const std::string& s, size_t max) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (out.size() >= max) return out + "...";
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

void drop_cache(const std::string& path) {
  Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (f.fd < 0) return;
  ::fdatasync(f.fd);
  ::posix_fadvise(f.fd, 0, 0, POSIX_FADV_DONTNEED);
}

}  // namespace pmamba::ckpt::fs
