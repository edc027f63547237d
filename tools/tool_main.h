// Shared shape of every pmamba tool's main(): parse with CLI11, run one library call, map
// exceptions to exit codes and print them as one line "<tool>: <message>" on stderr.
//   0 success / equal, 1 invalid or different (set by the callee), 2 usage error or
//   unreadable input, 3 internal error.
#pragma once

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>
#include <signal.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <new>
#include <string>

#include "src/ckpt/errors.h"
#include "src/model/errors.h"
#include "src/pp/errors.h"

namespace pmamba::tools {

inline std::string first_line(const std::string& s) {
  const size_t nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

/// Parses a uint64 strictly: digits only, at most 2^64 - 1. Returns "" or what is wrong.
inline std::string parse_u64(const std::string& text, uint64_t* out) {
  const bool digits = !text.empty() && text.find_first_not_of("0123456789") == std::string::npos;
  errno = 0;
  const unsigned long long v = digits ? std::strtoull(text.c_str(), nullptr, 10) : 0;
  if (!digits || errno == ERANGE) return "must be an integer in [0, 18446744073709551615], found '" + text + "'";
  if (out) *out = v;
  return "";
}

/// A uint64 option (a seed): CLI11 would turn "-1" and 2^64 into 2^64 - 1; this one refuses them.
inline CLI::Option* add_u64_option(CLI::App& app, const std::string& name, uint64_t& target, const std::string& help) {
  auto* opt = app.add_option(
      name, [&target](const CLI::results_t& r) { return parse_u64(r.at(0), &target).empty(); }, help);
  opt->type_name("UINT64")->expected(1);
  opt->check(CLI::Validator([name](std::string& v) { const std::string e = parse_u64(v, nullptr); return e.empty() ? e : name + " " + e; },
                            "UINT64"));
  return opt;
}

/// Parses argv into `app`, then runs `body` (which returns the exit code).
inline int run_tool(CLI::App& app, int argc, char** argv, const std::function<int()>& body) {
  const std::string name = app.get_name();
  // Past a file-size limit (ulimit -f) a write then fails with EFBIG, which is reported and
  // cleaned up like a full disk, instead of the process dying by SIGXFSZ mid-write.
  ::signal(SIGXFSZ, SIG_IGN);
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
    const std::string what = first_line(e.what_without_backtrace());
    // An allocation that did not fit is the machine's limit, not pmamba's bug.
    if (what.find("not enough memory") != std::string::npos) {
      std::cerr << name << ": " << what << "\n";
      return 2;
    }
    std::cerr << name << ": " << what << "\n";
    return 3;
  } catch (const std::bad_alloc&) {
    std::cerr << name << ": not enough memory for this request\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << name << ": internal error: " << first_line(e.what()) << "\n";
    return 3;
  }
}

}  // namespace pmamba::tools
