// File-system primitives for the commit protocol: every failure throws IoError with errno's text.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pmamba::ckpt::fs {

bool exists(const std::string& path);
bool is_dir(const std::string& path);
bool is_file(const std::string& path);
int64_t file_size(const std::string& path);  // -1 when missing

/// mkdir -p. Throws IoError naming the path that could not be created.
void make_dirs(const std::string& path);
/// rm -rf (no error when missing).
void remove_tree(const std::string& path);
void remove_file(const std::string& path);

/// fsync of a file or directory (opened read-only).
void fsync_path(const std::string& path);
/// rename(2); throws IoError.
void rename_path(const std::string& from, const std::string& to);
/// Atomically swaps two existing paths (renameat2 RENAME_EXCHANGE).
void exchange_paths(const std::string& a, const std::string& b);

/// Writes `data` to path.tmp-<pid>, fsyncs it, renames it over `path`, fsyncs the directory.
void write_file_atomic(const std::string& path, const std::string& data);
/// Reads a whole regular file. Devices, FIFOs, directories and files larger than `max_bytes`
/// are refused (FormatError naming what was found) before anything is read or allocated; the
/// open never blocks (a FIFO is not waited on).
std::string read_file(const std::string& path, int64_t max_bytes = 64 << 20);
/// Opens a regular file read-only (O_CLOEXEC, never blocking on a FIFO) and returns its
/// descriptor and size; refuses anything else as read_file does. The caller closes it.
int open_regular(const std::string& path, int64_t max_bytes, int64_t* size);

std::vector<std::string> list_dir(const std::string& path);  // names, sorted, no . or ..
std::string join(const std::string& a, const std::string& b);
std::string parent(const std::string& path);
std::string basename(const std::string& path);

/// The absolute form of a path that need not exist: symbolic links are resolved in the part
/// that exists, "." and ".." are removed from the rest. Two names of one directory give the
/// same string, so containment between an input and an output can be decided before the
/// output is created.
std::string absolute_path(const std::string& path);
/// True when `path` is `dir` or lies below it (both given by absolute_path).
bool within(const std::string& path, const std::string& dir);

/// Bytes an unprivileged writer may still use on the filesystem that holds `path` (or, when it
/// does not exist yet, its nearest existing ancestor); -1 when unknown.
int64_t free_bytes(const std::string& path);
/// The type of that filesystem, by name ("ext4", "nfs", "lustre", ...; "type 0x..." otherwise).
std::string filesystem_type(const std::string& path);

/// True when `s` is valid UTF-8 (what a JSON string must be).
bool valid_utf8(const std::string& s);

/// `s` as it can be shown in a message: printable ASCII as is, other bytes as \xNN (a NUL no
/// longer cuts the message off), cut after `max` characters with "...".
std::string printable(const std::string& s, size_t max = 120);

/// Drops the file's cached pages (posix_fadvise DONTNEED) so the next read hits the disk.
void drop_cache(const std::string& path);

}  // namespace pmamba::ckpt::fs
