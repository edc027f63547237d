// "did you mean ...?" for a mistyped name (an option, a subcommand, a choice, a data source).
// Header-only and free of any pmamba type, so that tools and libraries alike can use it.
// Distance is Damerau-Levenshtein in its optimal-string-alignment form (an insertion, deletion,
// substitution or swap of two neighbours costs 1), so `--stesp` is one step from `--steps`.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

namespace pmamba::ckpt {

namespace detail {

inline std::string strip_dashes(const std::string& s) {
  const size_t i = s.find_first_not_of('-');
  return i == std::string::npos ? std::string() : s.substr(i);
}

}  // namespace detail

/// Edit distance between a and b: insertions, deletions, substitutions and swaps of two
/// adjacent characters each count 1 (optimal string alignment).
inline size_t edit_distance(const std::string& a, const std::string& b) {
  const size_t n = a.size(), m = b.size();
  // d[i][j]: distance between a[0, i) and b[0, j), rows of m + 1.
  std::vector<size_t> d((n + 1) * (m + 1));
  auto at = [m, &d](size_t i, size_t j) -> size_t& { return d[i * (m + 1) + j]; };
  for (size_t i = 0; i <= n; ++i) at(i, 0) = i;
  for (size_t j = 0; j <= m; ++j) at(0, j) = j;
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      size_t v = std::min({at(i - 1, j) + 1, at(i, j - 1) + 1, at(i - 1, j - 1) + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) v = std::min(v, at(i - 2, j - 2) + 1);
      at(i, j) = v;
    }
  }
  return at(n, m);
}

/// The candidates closest to `word`, in candidate order: those at the smallest edit distance
/// when it is at most 2 (at most 1 for words of 2 or 3 characters, 0 for one character, so a
/// short word does not match everything); failing that, the one candidate `word` is a prefix
/// of, when there is exactly one. Leading dashes are ignored on both sides (`-steps` finds
/// `--steps`) and kept in what is returned. Empty when nothing is close, or `word` is itself a
/// candidate.
inline std::vector<std::string> closest_matches(const std::string& word, const std::vector<std::string>& candidates) {
  const std::string w = detail::strip_dashes(word);
  if (w.empty()) return {};
  const size_t limit = std::min<size_t>(2, w.size() / 2);
  size_t best = limit;
  std::vector<std::string> out, prefixed;
  for (const auto& c : candidates) {
    const std::string s = detail::strip_dashes(c);
    if (s.empty()) continue;
    if (c == word) return {};
    const size_t dist = edit_distance(w, s);
    if (dist <= limit) {
      if (dist < best) {
        best = dist;
        out.clear();
      }
      if (dist == best && std::find(out.begin(), out.end(), c) == out.end()) out.push_back(c);
    }
    if (s.size() > w.size() && s.compare(0, w.size(), w) == 0 &&
        std::find(prefixed.begin(), prefixed.end(), c) == prefixed.end()) {
      prefixed.push_back(c);
    }
  }
  if (!out.empty()) return out;
  if (prefixed.size() == 1) return prefixed;
  return {};
}

/// " (did you mean X?)", " (did you mean X or Y?)" (a tie, at most three named), or "" when no
/// candidate is close (see closest_matches).
/// Example: did_you_mean("--stesp", {"--steps", "--seed"}) == " (did you mean --steps?)".
inline std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates) {
  const std::vector<std::string> best = closest_matches(word, candidates);
  if (best.empty()) return "";
  std::string s = " (did you mean ";
  const size_t n = std::min<size_t>(best.size(), 3);
  for (size_t i = 0; i < n; ++i) s += (i == 0 ? "" : i + 1 == n ? " or " : ", ") + best[i];
  return s + "?)";
}

}  // namespace pmamba::ckpt
