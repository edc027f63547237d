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

/// A stage stopped because another one failed or stopped answering: the message names that
/// stage. Its failure report says so, and the launcher reports the other stage's cause first.
class PeerFailure : public PipelineError {
 public:
  explicit PeerFailure(const std::string& what) : PipelineError(what) {}
};

}  // namespace pmamba::pp
