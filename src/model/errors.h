// Errors thrown by pmamba::model. Messages say what was expected, what was found, and where.
#pragma once

#include <stdexcept>
#include <string>

namespace pmamba::model {

/// A configuration, preset, partition or stage layout that cannot be used.
class ConfigError : public std::runtime_error {
 public:
  explicit ConfigError(const std::string& what) : std::runtime_error(what) {}
};

/// A tensor crossing a stage boundary whose shape or dtype is not what the stage expects.
class BoundaryError : public std::runtime_error {
 public:
  explicit BoundaryError(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace pmamba::model
