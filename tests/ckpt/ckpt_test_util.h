// Helpers for the checkpoint tests: tiny checkpoints, byte surgery on shards, child processes.
#pragma once

#include <hdf5.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "src/ckpt/checkpoint.h"
#include "src/ckpt/fs.h"
#include "src/model/fqn.h"
#include "src/pp/state.h"

namespace pmamba::test {

inline std::string save_tiny(const std::string& root, int64_t step, const std::string& layout,
                             const std::string& compression = "zstd", uint64_t seed = 3,
                             model::MambaConfig config = model::preset("tiny")) {
  const auto stages = model::make_stages(config.n_layer, 0, layout);
  ckpt::SaveOptions o;
  o.write.compression = ckpt::Compression::parse(compression);
  o.write.chunk_bytes = 1024;  // many chunks, edge chunks included, even for tiny tensors
  return ckpt::save_checkpoint(root, step, config, stages, pp::initial_train_state(seed, step), o,
                               [&](const model::StageSpec& spec) {
                                 model::MambaLM m(config, spec);
                                 m->init_parameters(seed);
                                 return pp::collect_stage(*m, nullptr);
                               });
}

/// A checkpoint whose optimizer state is not trivial: random moments, step 5, so that a reshard
/// that mixed up slots or FQNs could not go unnoticed.
inline std::string save_trained(const std::string& root, const std::string& layout, const std::string& compression,
                                const model::MambaConfig& config, uint64_t seed = 4, int64_t step = 5) {
  const auto stages = model::make_stages(config.n_layer, 0, layout);
  ckpt::SaveOptions o;
  o.write.compression = ckpt::Compression::parse(compression);
  o.write.chunk_bytes = 2048;
  return ckpt::save_checkpoint(root, step, config, stages, pp::initial_train_state(seed, step), o,
                               [&](const model::StageSpec& spec) {
                                 model::MambaLM m(config, spec);
                                 m->init_parameters(seed);
                                 std::vector<std::pair<std::string, at::Tensor>> named;
                                 for (const auto& item : m->named_parameters()) named.emplace_back(item.key(), item.value());
                                 pp::AdamW opt(named, config, {});
                                 for (const auto& [fqn, p] : named) {
                                   if (opt.is_follower(fqn)) continue;
                                   // Same values whatever stage writes them: seeded by the FQN.
                                   at::Generator g = at::detail::createCPUGenerator(std::hash<std::string>{}(fqn) ^ seed);
                                   auto& st = opt.state(fqn);
                                   st.exp_avg = at::normal(0, 1e-2, p.sizes(), g);
                                   st.exp_avg_sq = at::normal(0, 1e-2, p.sizes(), g).pow_(2);
                                   st.step = step;
                                 }
                                 if (config.tie_embeddings && !spec.is_first() && spec.is_last()) {
                                   // The last stage's tied head carries the embedding's state, as training keeps it.
                                   at::Generator g = at::detail::createCPUGenerator(
                                       std::hash<std::string>{}(model::kEmbeddingFqn) ^ seed);
                                   auto& st = opt.state(model::kLmHeadFqn);
                                   st.exp_avg = at::normal(0, 1e-2, {config.padded_vocab(), config.d_model}, g);
                                   st.exp_avg_sq = at::normal(0, 1e-2, {config.padded_vocab(), config.d_model}, g).pow_(2);
                                 }
                                 return pp::collect_stage(*m, &opt);
                               });
}

/// Every (fqn, slot) of a checkpoint, read and digest-checked.
inline std::map<std::string, at::Tensor> load_everything(const std::string& path) {
  ckpt::CheckpointReader r(path);
  std::map<std::string, at::Tensor> out;
  for (const auto& t : r.manifest().tensors) {
    const auto& target = r.manifest().resolve(t.fqn);
    for (const auto& kv : target.slots) {
      out[t.fqn + "/" + ckpt::slot_name(kv.first)] = r.read(t.fqn, kv.first);
    }
  }
  return out;
}

/// File offset of the first stored byte of a dataset (contiguous, or its first chunk), and the
/// number of stored bytes there.
inline std::pair<int64_t, int64_t> dataset_file_extent(const std::string& file, const std::string& path) {
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t d = H5Dopen2(f, path.c_str(), H5P_DEFAULT);
  haddr_t addr = H5Dget_offset(d);
  hsize_t size = H5Dget_storage_size(d);
  if (addr == HADDR_UNDEF) {  // chunked: the first chunk
    hsize_t offset[8] = {0};
    unsigned mask = 0;
    const hid_t space = H5Dget_space(d);
    if (H5Dget_chunk_info(d, space, 0, offset, &mask, &addr, &size) < 0) addr = HADDR_UNDEF;
    H5Sclose(space);
  }
  H5Dclose(d);
  H5Fclose(f);
  if (addr == HADDR_UNDEF) throw std::runtime_error("no storage for " + path + " in " + file);
  return {static_cast<int64_t>(addr), static_cast<int64_t>(size)};
}

inline int64_t dataset_file_offset(const std::string& file, const std::string& path) {
  return dataset_file_extent(file, path).first;
}

inline void flip_byte(const std::string& file, int64_t offset) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(offset);
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x10);
  f.seekp(offset);
  f.write(&c, 1);
}

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

inline std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size())) {
    s.replace(pos, from.size(), to);
  }
  return s;
}

/// Runs a command through /bin/sh; returns the raw wait status.
inline int run_shell(const std::string& cmd) { return std::system(cmd.c_str()); }

inline std::string bin_dir() {
  const char* b = std::getenv("PMAMBA_BIN_DIR");
  return b ? b : PMAMBA_TEST_BIN_DIR;
}

}  // namespace pmamba::test
