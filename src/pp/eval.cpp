#include "src/pp/eval.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <fstream>
#include <memory>
#include <sstream>

#include "src/ckpt/tensor_file.h"
#include "src/model/partition.h"
#include "src/pp/errors.h"
#include "src/pp/state.h"

namespace pmamba::pp {

namespace {

std::vector<int64_t> parse_line(const std::string& line, const std::string& where) {
  std::vector<int64_t> ids;
  std::string token;
  std::string cleaned = line;
  for (char& ch : cleaned) {
    if (ch == ',' || ch == '\t') ch = ' ';
  }
  std::stringstream words(cleaned);
  while (words >> token) {
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(token, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != token.size() || used == 0 || v < 0) {
      throw UsageError("token '" + token + "' " + where + " is not a non-negative integer");
    }
    ids.push_back(v);
  }
  return ids;
}

at::Tensor to_batch(const std::vector<std::vector<int64_t>>& rows, const std::string& where) {
  if (rows.empty()) throw UsageError("no tokens given " + where);
  const size_t len = rows[0].size();
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].size() != len) {
      throw UsageError("sequence " + std::to_string(i + 1) + " " + where + " has " +
                       std::to_string(rows[i].size()) + " tokens but sequence 1 has " +
                       std::to_string(len));
    }
  }
  at::Tensor t = at::empty({static_cast<int64_t>(rows.size()), static_cast<int64_t>(len)}, at::kLong);
  auto acc = t.accessor<int64_t, 2>();
  for (size_t i = 0; i < rows.size(); ++i)
    for (size_t j = 0; j < len; ++j) acc[i][j] = rows[i][j];
  return t;
}

}  // namespace

at::Tensor parse_tokens(const std::string& text) {
  std::vector<int64_t> ids = parse_line(text, "in --tokens");
  if (ids.empty()) throw UsageError("--tokens is empty (expected e.g. 1,2,3)");
  return to_batch({ids}, "in --tokens");
}

at::Tensor read_tokens_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw UsageError("cannot open tokens file '" + path + "'");
  std::vector<std::vector<int64_t>> rows;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    auto ids = parse_line(line, "on line " + std::to_string(line_no) + " of '" + path + "'");
    if (!ids.empty()) rows.push_back(std::move(ids));
  }
  return to_batch(rows, "in '" + path + "'");
}

EvalResult run_eval(const EvalOptions& o) {
  if (o.threads > 0) at::set_num_threads(o.threads);
  const int sources = !o.preset.empty() + !o.config_path.empty() + !o.ckpt.empty();
  if (sources != 1) {
    throw UsageError("give exactly one of --preset, --config or --ckpt");
  }
  std::unique_ptr<ckpt::CheckpointReader> reader;
  if (!o.ckpt.empty()) reader = std::make_unique<ckpt::CheckpointReader>(o.ckpt);
  const model::MambaConfig config = reader ? reader->manifest().config
                                    : o.preset.empty() ? model::config_from_file(o.config_path)
                                                       : model::preset(o.preset);
  const std::vector<model::StageSpec> stages = model::make_stages(config.n_layer, o.pp, o.partition);

  if (o.tokens.empty() == o.tokens_file.empty()) throw UsageError("give exactly one of --tokens or --tokens-file");
  const at::Tensor ids = o.tokens.empty() ? read_tokens_file(o.tokens_file) : parse_tokens(o.tokens);
  const int64_t max_id = ids.max().item<int64_t>();
  if (max_id >= config.vocab_size) {
    throw UsageError("token id " + std::to_string(max_id) + " is out of range for vocab_size " +
                     std::to_string(config.vocab_size));
  }

  at::NoGradGuard no_grad;
  at::Tensor x = ids;
  for (const auto& spec : stages) {
    model::MambaLM stage(config, spec, o.boundary);
    if (reader) {
      load_stage(*reader, *stage, nullptr);
    } else {
      stage->init_parameters(o.seed);
    }
    x = stage->forward(x);
  }
  EvalResult r;
  r.logits = x.to(at::kFloat);
  r.partition = model::partition_string(stages);
  const int64_t len = ids.size(1);
  if (len > 1) {
    const at::Tensor pred = r.logits.narrow(1, 0, len - 1).reshape({-1, r.logits.size(2)});
    const at::Tensor target = ids.narrow(1, 1, len - 1).reshape({-1});
    r.loss = at::cross_entropy_loss(pred.to(at::kDouble), target).item<double>();
    r.accuracy = pred.argmax(-1).eq(target).to(at::kDouble).mean().item<double>();
    r.predictions = target.numel();
  }
  if (!o.logits_out.empty()) ckpt::write_tensor_file(o.logits_out, {{"/logits", r.logits}});
  return r;
}

}  // namespace pmamba::pp
