// Shared shape of every pmamba tool's main(): parse with CLI11, run one library call, map
// exceptions to exit codes and print them as one line "<tool>: <message>" on stderr.
//   0 success / equal, 1 invalid or different (set by the callee), 2 usage error or
//   unreadable input, 3 internal error.
// run_tool also gives every tool the same `--version` (tools/version.h), shows every option's
// default in `--help`, and adds "(did you mean --steps?)" to a usage error about a mistyped
// option, subcommand or choice.
#pragma once

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <new>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "kernels/memory.h"
#include "src/ckpt/errors.h"
#include "src/ckpt/suggest.h"
#include "src/model/errors.h"
#include "src/pp/errors.h"
#include "tools/version.h"

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
  opt->default_function([&target] { return std::to_string(target); });
  opt->check(CLI::Validator([name](std::string& v) { const std::string e = parse_u64(v, nullptr); return e.empty() ? e : name + " " + e; },
                            "UINT64"));
  return opt;
}

namespace detail {

/// The option groups (CLI11 apps without a name) and the subcommands of `app`.
inline std::vector<CLI::App*> children(CLI::App& app) {
  return app.get_subcommands([](CLI::App*) { return true; });
}

/// A default as the user would write it: "1e-8" (not the stream's "1e-08"), "1,2" (not "[1,2]"),
/// nothing for an empty list.
inline std::string tidy_default(std::string s, bool list) {
  if (list && s.size() >= 2 && s.front() == '[' && s.back() == ']') s = s.substr(1, s.size() - 2);
  const size_t e = s.find_first_of("eE");
  if (e != std::string::npos && e > 0 && s.find_first_not_of("0123456789.-+eE") == std::string::npos) {
    std::string mantissa = s.substr(0, e), exponent = s.substr(e + 1);
    std::string sign;
    if (!exponent.empty() && (exponent[0] == '+' || exponent[0] == '-')) {
      if (exponent[0] == '-') sign = "-";
      exponent.erase(0, 1);
    }
    const size_t nz = exponent.find_first_not_of('0');
    if (!exponent.empty()) s = mantissa + "e" + sign + (nz == std::string::npos ? "0" : exponent.substr(nz));
  }
  return s;
}

/// Records each option's current value (its default: nothing is parsed yet) for --help, in
/// `app`, its option groups and its subcommands. Flags and options without a variable show none;
/// a default the tool set itself (`->default_str("the checkpoint's")`, for a sentinel value that
/// means "from elsewhere") is kept.
inline void capture_defaults(CLI::App& app) {
  for (CLI::Option* opt : app.get_options()) {
    if (!opt->get_default_str().empty()) continue;
    opt->capture_default_str();
    const std::string d = opt->get_default_str();
    if (!d.empty()) opt->default_str(tidy_default(d, opt->get_items_expected_max() > 1));
  }
  for (CLI::App* sub : children(app)) capture_defaults(*sub);
}

/// "--name" and "-n" for every option of `app` and its option groups.
inline void option_names(CLI::App& app, std::vector<std::string>& out) {
  for (const CLI::Option* opt : app.get_options()) {
    for (const auto& l : opt->get_lnames()) out.push_back("--" + l);
    for (const auto& s : opt->get_snames()) out.push_back("-" + s);
  }
  for (CLI::App* sub : children(app)) {
    if (sub->get_name().empty()) option_names(*sub, out);
  }
}

/// " (did you mean X?)" for the first argument CLI11 left over in `app` or a subcommand it
/// parsed: an option name among that command's options (`--stesp=10` -> --steps), a word
/// among the subcommand names when none was given (`verfy` -> verify).
inline std::string suggest_for_leftovers(CLI::App& app) {
  for (const std::string& word : app.remaining()) {
    std::vector<std::string> candidates;
    std::string w = word;
    if (!w.empty() && w[0] == '-') {
      w = w.substr(0, w.find('='));
      option_names(app, candidates);
    } else {
      bool given = false;  // a subcommand was parsed: the word is an extra argument of its parent
      for (CLI::App* sub : children(app)) given = given || (!sub->get_name().empty() && sub->parsed());
      for (CLI::App* sub : children(app)) {
        if (given) break;
        if (sub->get_name().empty()) continue;
        candidates.push_back(sub->get_name());
        for (const auto& alias : sub->get_aliases()) candidates.push_back(alias);
      }
    }
    const std::string hint = ckpt::did_you_mean(w, candidates);
    if (!hint.empty()) return hint;
  }
  for (CLI::App* sub : children(app)) {
    if (sub->get_name().empty() || !sub->parsed()) continue;
    const std::string hint = suggest_for_leftovers(*sub);
    if (!hint.empty()) return hint;
  }
  return "";
}

/// " (did you mean 1f1b?)" for CLI::IsMember's "--schedule: 1f1 not in {gpipe,1f1b}".
inline std::string suggest_for_choice(const std::string& message) {
  const std::string marker = " not in {";
  const size_t at = message.find(marker);
  const size_t close = at == std::string::npos ? at : message.find('}', at);
  if (close == std::string::npos) return "";
  const size_t colon = message.rfind(": ", at);
  const std::string value = message.substr(colon == std::string::npos ? 0 : colon + 2,
                                           at - (colon == std::string::npos ? 0 : colon + 2));
  std::vector<std::string> choices;
  const std::string set = message.substr(at + marker.size(), close - at - marker.size());
  for (size_t begin = 0; begin <= set.size();) {
    const size_t comma = std::min(set.find(',', begin), set.size());
    choices.push_back(set.substr(begin, comma - begin));
    begin = comma + 1;
  }
  return ckpt::did_you_mean(value, choices);
}

}  // namespace detail

/// Prepares a compute-heavy tool's process, first thing in main (before any thread or signal
/// handler):
///  - restarts the program (same pid) with OMP_WAIT_POLICY=passive and OPENBLAS_THREAD_TIMEOUT=4,
///    each unless the caller set it (no restart when both are set). LibTorch's parallel regions are libgomp's, and its default
///    spin-wait keeps idle threads busy between them, fighting OpenBLAS's own pool for the same
///    cores: on 2 cores a mamba-130m decode step ran 4x slower and tiny-hybrid training 2.1-2.9x
///    slower. OpenBLAS's idle workers likewise spin (with sched_yield) for 2^28 cycles after each
///    product before they sleep, stealing the cores from the scan and elementwise work between
///    matmuls; 2^4 cycles made small training 15% faster (bench/RESULTS.md). Both libraries read
///    the variables when they load, before main, hence the exec; if it fails the program simply
///    runs as it is;
///  - keeps freed memory in the process (kernels::retain_freed_memory).
inline void prepare_compute_process(char** argv) {
  bool changed = false;
  for (const auto& [name, value] : {std::pair<const char*, const char*>{"OMP_WAIT_POLICY", "passive"},
                                    std::pair<const char*, const char*>{"OPENBLAS_THREAD_TIMEOUT", "4"}}) {
    if (!std::getenv(name)) {
      ::setenv(name, value, 1);
      changed = true;
    }
  }
  if (changed) ::execv("/proc/self/exe", argv);
  kernels::retain_freed_memory();
}

/// Long names (no dashes) of the options given on the command line, option groups included:
/// what a library lets override a checkpoint's recorded values.
inline std::set<std::string> given_options(const CLI::App& app) {
  std::set<std::string> given;
  for (const CLI::Option* opt : app.get_options()) {
    if (opt->count() > 0 && !opt->get_lnames().empty()) given.insert(opt->get_lnames().front());
  }
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App* s) { return s->get_name().empty(); })) {
    for (const std::string& name : given_options(*sub)) given.insert(name);
  }
  return given;
}

/// Parses argv into `app`, then runs `body` (which returns the exit code). Before parsing it
/// adds `--version` (tools/version.h) and records every option's default for --help; a usage
/// error is one line on stderr with a "did you mean" when a name is close (exit 2).
inline int run_tool(CLI::App& app, int argc, char** argv, const std::function<int()>& body) {
  const std::string name = app.get_name();
  // Past a file-size limit (ulimit -f) a write then fails with EFBIG, which is reported and
  // cleaned up like a full disk, instead of the process dying by SIGXFSZ mid-write.
  ::signal(SIGXFSZ, SIG_IGN);
  app.set_version_flag("--version", version_line(name));
  detail::capture_defaults(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    const std::string message = first_line(e.what());
    std::string hint = detail::suggest_for_leftovers(app);
    if (hint.empty()) hint = detail::suggest_for_choice(message);
    std::cerr << name << ": " << message << hint << " (see " << name << " --help)\n";
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
