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
std::string read_file(const std::string& path, int64_t max_bytes = 64 << 20);

std::vector<std::string> list_dir(const std::string& path);  // names, sorted, no . or ..
std::string join(const std::string& a, const std::string& b);
std::string parent(const std::string& path);
std::string basename(const std::string& path);

/// Drops the file's cached pages (posix_fadvise DONTNEED) so the next read hits the disk.
void drop_cache(const std::string& path);

}  // namespace pmamba::ckpt::fs
