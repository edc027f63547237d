#include "src/model/partition.h"

#include <sstream>

#include "src/model/errors.h"

namespace pmamba::model {

StageSpec whole_model(int64_t n_layer) { return StageSpec{0, 1, 0, n_layer}; }

namespace {

void check_num_stages(int64_t n_layer, int64_t num_stages) {
  if (num_stages < 1) {
    throw ConfigError("pipeline: number of stages must be >= 1 but is " +
                      std::to_string(num_stages));
  }
  if (num_stages > n_layer + 1) {
    throw ConfigError("pipeline: " + std::to_string(num_stages) + " stages is more than allowed for " +
                      std::to_string(n_layer) + " layers (at most n_layer + 1 = " +
                      std::to_string(n_layer + 1) + ")");
  }
}

}  // namespace

std::vector<int64_t> balanced_partition(int64_t n_layer, int num_stages) {
  check_num_stages(n_layer, num_stages);
  std::vector<int64_t> counts(num_stages, n_layer / num_stages);
  for (int64_t i = 0; i < n_layer % num_stages; ++i) counts[i] += 1;
  return counts;
}

std::vector<int64_t> parse_partition(const std::string& text) {
  std::vector<int64_t> counts;
  std::stringstream ss(text);
  std::string token;
  if (text.empty()) throw ConfigError("partition: empty list (expected e.g. 3,5,4)");
  while (std::getline(ss, token, ',')) {
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(token, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != token.size() || v < 0) {
      throw ConfigError("partition: '" + token + "' in '" + text +
                        "' is not a non-negative layer count");
    }
    counts.push_back(v);
  }
  if (!text.empty() && text.back() == ',') {
    throw ConfigError("partition: trailing comma in '" + text + "'");
  }
  return counts;
}

std::vector<StageSpec> make_stages(int64_t n_layer, const std::vector<int64_t>& counts) {
  check_num_stages(n_layer, static_cast<int64_t>(counts.size()));
  int64_t sum = 0;
  for (int64_t c : counts) {
    if (c < 0) throw ConfigError("partition: layer count " + std::to_string(c) + " is negative");
    sum += c;
  }
  if (sum != n_layer) {
    std::string list;
    for (int64_t c : counts) list += (list.empty() ? "" : ",") + std::to_string(c);
    throw ConfigError("partition: " + list + " sums to " + std::to_string(sum) +
                      " layers but the model has n_layer = " + std::to_string(n_layer));
  }
  std::vector<StageSpec> stages;
  int64_t begin = 0;
  const int n = static_cast<int>(counts.size());
  for (int s = 0; s < n; ++s) {
    stages.push_back(StageSpec{s, n, begin, begin + counts[s]});
    begin += counts[s];
  }
  return stages;
}

std::vector<StageSpec> make_stages(int64_t n_layer, int num_stages,
                                   const std::string& partition) {
  if (partition.empty()) return make_stages(n_layer, balanced_partition(n_layer, num_stages));
  std::vector<int64_t> counts = parse_partition(partition);
  if (num_stages > 0 && static_cast<int>(counts.size()) != num_stages) {
    throw ConfigError("partition: '" + partition + "' lists " + std::to_string(counts.size()) +
                      " stages but --pp is " + std::to_string(num_stages));
  }
  return make_stages(n_layer, counts);
}

std::string partition_string(const std::vector<StageSpec>& stages) {
  std::string s;
  for (const auto& st : stages) s += (s.empty() ? "" : ",") + std::to_string(st.num_layers());
  return s;
}

}  // namespace pmamba::model
