// Errors thrown by pmamba::report. A metrics file that cannot be read is unreadable input, like
// a bad checkpoint: the tools map it to exit code 2.
#pragma once

#include <string>

#include "src/ckpt/errors.h"

namespace pmamba::report {

/// A metrics file that is not what the metrics contract describes: a line that is not a JSON
/// object, a step that is not an integer, a known metric that is neither a number nor null.
/// The message names the file and the line number.
class MetricsError : public ckpt::FormatError {
 public:
  explicit MetricsError(const std::string& what) : ckpt::FormatError(what) {}
};

}  // namespace pmamba::report
