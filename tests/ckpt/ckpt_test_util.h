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
#include "src/pp/state.h"

namespace pmamba::test {

inline std::string save_tiny(const std::string& root, int64_t step, const std::string& layout,
                             const std::string& compression = "zstd", uint64_t seed = 3,
                             model::MambaConfig config = model::preset("tiny")) {
  const auto stages = model::make_stages(config.n_layer, 0, layout);
  ckpt::SaveOptions o;
  o.write.compression = ckpt::Compression::parse(compression);
  o.write.chunk_bytes = 1024;  // many chunks, edge chunks included, even for tiny tensors
  return ckpt::save_checkpoint(root, step, config, stages, pp::initial_train_state(seed), o,
                               [&](const model::StageSpec& spec) {
                                 model::MambaLM m(config, spec);
                                 m->init_parameters(seed);
                                 return pp::collect_stage(*m, nullptr);
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

/// File offset of the first stored byte of a dataset (contiguous or first chunk).
inline int64_t dataset_file_offset(const std::string& file, const std::string& path) {
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t d = H5Dopen2(f, path.c_str(), H5P_DEFAULT);
  haddr_t addr = H5Dget_offset(d);
  if (addr == HADDR_UNDEF) {  // chunked: first chunk's address
    hsize_t offset[8] = {0};
    unsigned mask = 0;
    hsize_t size = 0;
    H5Dget_chunk_info(d, H5S_ALL, 0, offset, &mask, &addr, &size);
  }
  H5Dclose(d);
  H5Fclose(f);
  return static_cast<int64_t>(addr);
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
  return b ? b : "build/bin";
}

}  // namespace pmamba::test
