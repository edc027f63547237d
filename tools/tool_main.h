// Shared shape of every pmamba tool's main(): parse with CLI11, run one library call, map
// exceptions to exit codes and print them as one line "<tool>: <message>" on stderr.
//   0 success / equal, 1 invalid or different (set by the callee), 2 usage error or
//   unreadable input, 3 internal error.
#pragma once

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include <functional>
#include <iostream>
#include <string>

#include "src/ckpt/errors.h"
#include "src/model/errors.h"
#include "src/pp/errors.h"

namespace pmamba::tools {

inline std::string first_line(const std::string& s) {
  const size_t nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

/// Parses argv into `app`, then runs `body` (which returns the exit code).
inline int run_tool(CLI::App& app, int argc, char** argv, const std::function<int()>& body) {
  const std::string name = app.get_name();
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << name << ": " << first_line(e.what()) << " (see " << name << " --help)\n";
    return 2;
  }
  try {
    return body();
  } catch (const pmamba::model::ConfigError& e) {
    std::cerr << name << ": " << first_line(e.what()) << "\n";
    return 2;
  } catch (const pmamba::pp::UsageError& e) {
    std::cerr << name << ": " << first_line(e.what()) << "\n";
    return 2;
  } catch (const pmamba::ckpt::UsageError& e) {
    std::cerr << name << ": " << first_line(e.what()) << "\n";
    return 2;
  } catch (const pmamba::ckpt::Error& e) {
    std::cerr << name << ": " << first_line(e.what()) << "\n";
    return 2;
  } catch (const pmamba::pp::PipelineError& e) {
    std::cerr << name << ": " << first_line(e.what()) << "\n";
    return 1;
  } catch (const c10::Error& e) {
    std::cerr << name << ": " << first_line(e.what_without_backtrace()) << "\n";
    return 3;
  } catch (const std::exception& e) {
    std::cerr << name << ": internal error: " << first_line(e.what()) << "\n";
    return 3;
  }
}

}  // namespace pmamba::tools
