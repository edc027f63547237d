// Errors thrown by pmamba::pp.
#pragma once

#include <stdexcept>
#include <string>

namespace pmamba::pp {

/// Bad options or inputs given to a pipeline job (tokens out of range, unreadable files, ...).
class UsageError : public std::runtime_error {
 public:
  explicit UsageError(const std::string& what) : std::runtime_error(what) {}
};

/// A failure of the distributed run: handshake mismatch, a peer that stopped answering, ...
class PipelineError : public std::runtime_error {
 public:
  explicit PipelineError(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace pmamba::pp
