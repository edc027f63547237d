// Errors thrown by pmamba::ckpt. Every message names the file (and FQN where there is one),
// what was expected and what was found.
#pragma once

#include <stdexcept>
#include <string>

namespace pmamba::ckpt {

/// Base of all checkpoint errors.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

/// The input is not a (valid, supported) checkpoint: missing manifest, bad format or version,
/// truncated or unreadable HDF5, shapes/dtypes that disagree with the config, ...
class FormatError : public Error {
 public:
  explicit FormatError(const std::string& what) : Error(what) {}
};

/// Stored bytes do not match their recorded digest.
class IntegrityError : public FormatError {
 public:
  explicit IntegrityError(const std::string& what) : FormatError(what) {}
};

/// The operating system or HDF5 failed to read or write (permissions, full disk, ...).
class IoError : public Error {
 public:
  explicit IoError(const std::string& what) : Error(what) {}
};

/// A request that cannot be honoured (impossible layout, existing output without --force).
class UsageError : public Error {
 public:
  explicit UsageError(const std::string& what) : Error(what) {}
};

/// Another process is writing into the checkpoint root (it holds the root's lock).
class LockedError : public UsageError {
 public:
  explicit LockedError(const std::string& what) : UsageError(what) {}
};

/// The machine lacks what a request needs: memory for a tensor or a model, room on a disk,
/// a thread. Messages say how much is needed and how much there is.
class ResourceError : public Error {
 public:
  explicit ResourceError(const std::string& what) : Error(what) {}
};

}  // namespace pmamba::ckpt
