// Checkpoint save/load benchmark: a mamba-130m-sized model with its AdamW state (~1.55 GB),
// saved and loaded by pmamba (none and zstd), against raw sequential I/O of the same bytes,
// torch::save/torch::load of the same tensors and, for the zstd save, the compressor alone on the
// same chunks and threads, measured side by side in one process. Each pmamba save also reports
// where its time went (ckpt::SaveProfile). Run it once with --dir on tmpfs (the software alone)
// and once on the disk.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/serialize.h>

#include <fcntl.h>
#include <unistd.h>
#include <zstd.h>

#include <cerrno>
#include <cstring>
#include <future>
#include <deque>
#include <map>
#include <nlohmann/json.hpp>

#include "bench/bench.h"
#include "bench/bench_util.h"
#include "kernels/threads.h"
#include "src/ckpt/checkpoint.h"
#include "src/ckpt/codec.h"
#include "src/ckpt/fs.h"
#include "src/ckpt/thread_pool.h"
#include "src/model/fqn.h"
#include "src/pp/state.h"

namespace pmamba::bench {

namespace {

struct State {
  model::MambaConfig config;
  model::MambaLM model{nullptr};
  std::unique_ptr<pp::AdamW> optim;
  std::vector<at::Tensor> distinct;  // every stored tensor once (the tied head shares the embedding's)
  size_t bytes = 0;
};

State make_state(const std::string& preset) {
  State s;
  s.config = model::preset(preset);
  s.model = model::MambaLM(s.config, model::whole_model(s.config.n_layer));
  s.model->init_parameters(1);
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : s.model->named_parameters()) named.emplace_back(item.key(), item.value());
  s.optim = std::make_unique<pp::AdamW>(named, s.config, pp::AdamWOptions{});
  at::Generator gen = at::detail::createCPUGenerator(7);
  for (const auto& [fqn, p] : named) {
    // Optimizer moments shaped like a real run's: m ~ N(0, 1e-3), v = g^2 with g ~ N(0, 1e-3).
    if (s.optim->is_follower(fqn)) continue;  // the tied head shares the embedding's state
    pp::ParamState& st = s.optim->state(fqn);
    st.exp_avg = at::normal(0.0, 1e-3, p.sizes(), gen);
    st.exp_avg_sq = at::normal(0.0, 1e-3, p.sizes(), gen).pow_(2);
    st.step = 1000;
    s.distinct.insert(s.distinct.end(), {p.detach(), st.exp_avg, st.exp_avg_sq});
  }
  for (const auto& t : s.distinct) s.bytes += t.nbytes();
  return s;
}

// The compressor alone, the contender a zstd save is held to: the same bytes cut into the same
// chunks pmamba's zstd save makes (rows of about `chunk_bytes` along dim 0, edge chunks padded to
// full size), compressed one-shot at the same level by a pool of the same size, each job reusing
// its context and buffers; no HDF5, no digest. With `shuffle`, each chunk is byte-shuffled first
// (the filter pipeline pmamba writes: shuffle -> zstd). With `out_path`, the frames are also
// written in order to that file from the calling thread and it is fsynced, as `zstd -T<threads>
// -o` would: the compressor's own single pass producing a file (on tmpfs the write is a memory
// copy that costs CPU). Returns seconds; `stored` gets the compressed total.
double compress_alone(const std::vector<at::Tensor>& ts, int threads, int level, bool shuffle, size_t chunk_bytes,
                      double* stored, const std::string& out_path = "", bool pmamba_coder = false) {
  struct Job {
    ckpt::ZstdCCtxPtr cctx{ZSTD_createCCtx()};
    std::vector<uint8_t> pad, scratch, out;
    size_t size = 0;
  };
  size_t total = 0;
  const double t0 = now_s();
  {
    int fd = -1;
    if (!out_path.empty()) {
      fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0) throw std::runtime_error("cannot create " + out_path + ": " + std::strerror(errno));
    }
    ckpt::ThreadPool pool(threads);
    const size_t window = static_cast<size_t>(2 * threads);
    std::vector<std::unique_ptr<Job>> spare;
    std::deque<std::pair<std::future<void>, std::unique_ptr<Job>>> inflight;
    auto retire = [&] {
      inflight.front().first.get();
      std::unique_ptr<Job> job = std::move(inflight.front().second);
      inflight.pop_front();
      total += job->size;
      if (fd >= 0) {
        for (size_t done = 0; done < job->size;) {
          const ssize_t n = ::write(fd, job->out.data() + done, job->size - done);
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) throw std::runtime_error("cannot write " + out_path + ": " + std::strerror(errno));
          done += static_cast<size_t>(n);
        }
      }
      spare.push_back(std::move(job));
    };
    for (const auto& t : ts) {
      if (t.dim() == 0 || t.numel() == 0) continue;  // scalars are stored uncompressed
      const auto* base = static_cast<const uint8_t*>(t.data_ptr());
      const size_t bytes = t.nbytes();
      const size_t elem = t.element_size();
      const size_t row_bytes = bytes / static_cast<size_t>(t.size(0));
      const size_t rows = std::min<size_t>(std::max<size_t>(1, chunk_bytes / row_bytes), static_cast<size_t>(t.size(0)));
      const size_t chunk_raw = rows * row_bytes;
      for (size_t start = 0; start < bytes; start += chunk_raw) {
        while (inflight.size() >= window) retire();
        if (spare.empty()) spare.push_back(std::make_unique<Job>());
        std::unique_ptr<Job> job = std::move(spare.back());
        spare.pop_back();
        Job* j = job.get();
        std::future<void> done = pool.submit([=] {
          const uint8_t* src = base + start;
          const size_t avail = std::min(chunk_raw, bytes - start);
          if (avail < chunk_raw) {
            j->pad.assign(chunk_raw, 0);
            std::memcpy(j->pad.data(), src, avail);
            src = j->pad.data();
          }
          if (j->out.size() < ZSTD_compressBound(chunk_raw)) j->out.resize(ZSTD_compressBound(chunk_raw));
          if (pmamba_coder) {  // pmamba's chunk coder (ckpt::encode_chunk), as a zstd save runs it
            j->size = ckpt::encode_chunk(src, chunk_raw, elem, level, j->cctx.get(), j->scratch, j->out.data(), j->out.size());
            return;
          }
          if (shuffle) {  // zstd's own pass over the shuffled chunk, not pmamba's chunk coder
            if (j->scratch.size() < chunk_raw) j->scratch.resize(chunk_raw);
            ckpt::shuffle_bytes(src, j->scratch.data(), chunk_raw, elem);
            src = j->scratch.data();
          }
          const size_t n = ZSTD_compressCCtx(j->cctx.get(), j->out.data(), j->out.size(), src, chunk_raw, level);
          if (ZSTD_isError(n)) throw std::runtime_error(ZSTD_getErrorName(n));
          j->size = n;
        });
        inflight.emplace_back(std::move(done), std::move(job));
      }
    }
    while (!inflight.empty()) retire();
    if (fd >= 0) {
      if (::fsync(fd) != 0) throw std::runtime_error("fsync of " + out_path + " failed: " + std::strerror(errno));
      ::close(fd);
    }
  }
  const double secs = now_s() - t0;
  if (stored) *stored = static_cast<double>(total);
  return secs;
}

// A SaveProfile's phases by name, in the order a save runs them.
std::vector<std::pair<std::string, double>> phases(const ckpt::SaveProfile& p) {
  return {{"produce", p.produce_s}, {"open", p.open_s},       {"metadata", p.metadata_s}, {"data", p.data_s},
          {"digest_wait", p.digest_s}, {"close", p.close_s},  {"fsync", p.fsync_s},       {"rename", p.rename_s},
          {"manifest", p.manifest_s}, {"commit", p.commit_s}};
}

}  // namespace

int run_ckpt_bench(const CkptBenchOptions& o) {
  kernels::set_threads(o.threads);
  State s = make_state(o.preset);
  // Raw I/O and torch::save move the same distinct tensors pmamba stores.
  const std::vector<at::Tensor>& distinct = s.distinct;
  const size_t bytes = s.bytes;
  const std::string dir = o.dir.empty() ? "bench-ckpt-tmp" : o.dir;
  ckpt::fs::remove_tree(dir);
  ckpt::fs::make_dirs(dir);
  const double gb = static_cast<double>(bytes) / 1e9;
  const std::string fs = ckpt::fs::filesystem_type(dir);
  std::fprintf(stderr, "state: %s, %.3f GB in %zu tensors, %d threads, %d repeats, dir %s (%s)\n", o.preset.c_str(),
               gb, distinct.size(), o.threads, o.repeats, dir.c_str(), fs.c_str());

  std::map<std::string, std::vector<double>> t, peak;
  std::map<std::string, std::map<std::string, std::vector<double>>> phase;  // compression -> phase -> seconds
  double alone_stored = 0, shuffled_stored = 0;
  std::map<std::string, double> stored;
  // Peak RSS is reported as the growth over the RSS before each operation: the state itself
  // (and the tied lm_head's own copy) is already resident.
  auto record = [&](const std::string& k, double secs, double pk, double before) {
    t[k].push_back(secs);
    peak[k].push_back(pk - before);
    std::fprintf(stderr, "  %-18s %7.3f s  %6.2f GB/s  RSS %6.0f MB, peak +%5.0f MB\n", k.c_str(), secs, gb / secs,
                 before, pk - before);
  };
  const auto stages = model::make_stages(s.config.n_layer, 1, "");
  for (int r = 0; r < o.repeats; ++r) {
    double pk = 0, secs = 0, before = 0;
    // ---- saves, back to back, each to a new file (as a checkpoint is), in an order that rotates
    // every repeat so no contender always follows the same neighbour ----
    std::vector<std::pair<const void*, size_t>> bufs;
    for (const auto& x : distinct) bufs.emplace_back(x.data_ptr(), x.nbytes());
    const std::vector<std::string> savers = {"raw", "pmamba-none", "zstd-alone", "pmamba-zstd:1", "torch",
                                             "shuffle-zstd-alone", "shuffle-zstd-file", "pmamba-coder-alone"};
    for (size_t k = 0; k < savers.size(); ++k) {
      const std::string what = savers[(k + static_cast<size_t>(r)) % savers.size()];
      before = rss_mb();
      if (what == "raw") {
        ckpt::fs::remove_file(dir + "/raw.bin");
        secs = timed([&] { raw_write(dir + "/raw.bin", bufs); }, &pk);
        record("raw_write", secs, pk, before);
      } else if (what == "torch") {
        ckpt::fs::remove_file(dir + "/torch.pt");
        secs = timed([&] {
          torch::save(distinct, dir + "/torch.pt");
          fsync_file(dir + "/torch.pt");  // the raw anchor fsyncs too
        }, &pk);
        record("torch_save", secs, pk, before);
      } else if (what == "shuffle-zstd-file") {
        ckpt::fs::remove_file(dir + "/zstd.bin");
        secs = timed([&] { compress_alone(distinct, o.threads, 1, true, ckpt::WriteOptions{}.chunk_bytes, nullptr, dir + "/zstd.bin"); }, &pk);
        record("shuffle_zstd_file", secs, pk, before);
      } else if (what == "pmamba-coder-alone") {
        secs = timed([&] {
          compress_alone(distinct, o.threads, 1, true, ckpt::WriteOptions{}.chunk_bytes, nullptr, "", true);
        }, &pk);
        record("pmamba_coder_alone", secs, pk, before);
      } else if (what == "zstd-alone" || what == "shuffle-zstd-alone") {
        const bool shuffle = what == "shuffle-zstd-alone";
        double stored_bytes = 0;
        secs = timed([&] { compress_alone(distinct, o.threads, 1, shuffle, ckpt::WriteOptions{}.chunk_bytes, &stored_bytes); }, &pk);
        (shuffle ? shuffled_stored : alone_stored) = stored_bytes;
        record(shuffle ? "shuffle_zstd_alone" : "zstd_alone", secs, pk, before);
      } else {
        const std::string comp = what.substr(7);
        ckpt::SaveOptions so;
        so.write.compression = ckpt::Compression::parse(comp);
        so.write.threads = o.threads;
        const std::string root = dir + "/pm-" + comp;
        ckpt::fs::remove_tree(root);
        ckpt::SaveProfile prof;
        so.profile = &prof;
        secs = timed([&] {
          ckpt::save_checkpoint(root, r, s.config, stages, pp::initial_train_state(1, r), so,
                                [&](const model::StageSpec&) { return pp::collect_stage(*s.model, s.optim.get()); });
        }, &pk);
        record("pmamba_save_" + comp, secs, pk, before);
        std::string line;
        double accounted = 0;
        for (const auto& [name, v] : phases(prof)) {
          phase[comp][name].push_back(v);
          accounted += v;
          char buf[64];
          std::snprintf(buf, sizeof buf, " %s %.3f", name.c_str(), v);
          line += buf;
        }
        phase[comp]["other"].push_back(secs - accounted);
        std::fprintf(stderr, "    phases:%s other %.3f (%lld datasets)\n", line.c_str(), secs - accounted,
                     static_cast<long long>(prof.datasets));
        stored[comp] = static_cast<double>(ckpt::CheckpointReader(root).manifest().total_stored_bytes());
      }
    }

    // ---- loads: each in a fresh process (same memory conditions for every contender), from
    // a cold page cache, into freshly allocated memory ----
    const std::vector<std::string> loaders = {"raw", "pmamba-none", "pmamba-zstd:1", "torch"};
    for (size_t k = 0; k < loaders.size(); ++k) {
      const std::string what = loaders[(k + static_cast<size_t>(r)) % loaders.size()];
      drop_cache_tree(dir);
      const std::string cmd = o.self + " ckpt-load --what " + what + " --dir " + dir + " --preset " + o.preset +
                              " --threads " + std::to_string(o.threads);
      FILE* pipe = ::popen(cmd.c_str(), "r");
      char buf[512] = {0};
      const bool got = pipe && std::fgets(buf, sizeof buf, pipe) != nullptr;
      const int rc = pipe ? ::pclose(pipe) : -1;
      if (!got || rc != 0) throw std::runtime_error("load child failed: " + cmd);
      const nlohmann::json r = nlohmann::json::parse(buf);
      const std::string name = what == "raw" ? "raw_read" : what == "torch" ? "torch_load" : "pmamba_load_" + what.substr(7);
      record(name, r.at("seconds").get<double>(), r.at("peak_mb").get<double>(), r.at("rss_before_mb").get<double>());
    }
  }
  const double state_mb = static_cast<double>(bytes) / (1 << 20);
  nlohmann::ordered_json j;
  j["bench"] = "ckpt";
  j["preset"] = o.preset;
  j["state_bytes"] = bytes;
  j["threads"] = o.threads;
  j["repeats"] = o.repeats;
  j["cpu"] = cpu_model();
  j["dir"] = dir;
  j["fs"] = fs;
  for (const auto& [k, v] : t) {
    j[k + "_s"] = median(v);
    j[k + "_min_s"] = *std::min_element(v.begin(), v.end());
  }
  // Speed ratios (the other's time over ours), each from medians of the same run.
  auto ratio = [&](const std::string& a, const std::string& b) { return median(t[b]) / median(t[a]); };
  // The same ratio per repeat (the contenders of one repeat ran back to back), then its median:
  // less sensitive to a slow stretch of the shared machine than a ratio of medians.
  auto paired = [&](const std::string& a, const std::string& b) {
    std::vector<double> r;
    for (size_t i = 0; i < std::min(t[a].size(), t[b].size()); ++i) r.push_back(t[b][i] / t[a][i]);
    return median(r);
  };
  j["save_none_vs_raw_write"] = ratio("pmamba_save_none", "raw_write");
  j["save_none_vs_raw_write_paired"] = paired("pmamba_save_none", "raw_write");
  j["save_zstd_vs_raw_write"] = ratio("pmamba_save_zstd:1", "raw_write");
  j["save_zstd_vs_zstd_alone"] = ratio("pmamba_save_zstd:1", "zstd_alone");
  j["save_zstd_vs_zstd_alone_paired"] = paired("pmamba_save_zstd:1", "zstd_alone");
  j["save_zstd_vs_shuffle_zstd_alone"] = ratio("pmamba_save_zstd:1", "shuffle_zstd_alone");
  j["save_zstd_vs_shuffle_zstd_alone_paired"] = paired("pmamba_save_zstd:1", "shuffle_zstd_alone");
  // pmamba's own chunk coder into memory, against zstd's pass: what the coder gains, and how
  // much of the save is left beside it (HDF5, the writes into the file).
  j["pmamba_coder_vs_shuffle_zstd_alone_paired"] = paired("pmamba_coder_alone", "shuffle_zstd_alone");
  j["save_zstd_vs_pmamba_coder_alone_paired"] = paired("pmamba_save_zstd:1", "pmamba_coder_alone");
  // Against the compressor writing its frames to a file in the same directory (and fsyncing):
  // the same work a zstd save must do, less HDF5 and the digests.
  j["save_zstd_vs_shuffle_zstd_file"] = ratio("pmamba_save_zstd:1", "shuffle_zstd_file");
  j["save_zstd_vs_shuffle_zstd_file_paired"] = paired("pmamba_save_zstd:1", "shuffle_zstd_file");
  j["zstd_alone_gb_per_s"] = gb / median(t["zstd_alone"]);
  j["shuffle_zstd_alone_gb_per_s"] = gb / median(t["shuffle_zstd_alone"]);
  j["zstd_alone_ratio"] = alone_stored > 0 ? static_cast<double>(bytes) / alone_stored : 0.0;
  j["shuffle_zstd_alone_ratio"] = shuffled_stored > 0 ? static_cast<double>(bytes) / shuffled_stored : 0.0;
  j["save_none_vs_torch_save"] = ratio("pmamba_save_none", "torch_save");
  j["torch_save_vs_raw_write"] = ratio("torch_save", "raw_write");
  j["load_none_vs_raw_read"] = ratio("pmamba_load_none", "raw_read");
  j["load_zstd_vs_raw_read"] = ratio("pmamba_load_zstd:1", "raw_read");
  j["load_none_vs_torch_load"] = ratio("pmamba_load_none", "torch_load");
  j["torch_load_vs_raw_read"] = ratio("torch_load", "raw_read");
  // Where pmamba's save time goes, phase by phase (medians of the repeats; "other" is what no
  // phase timer covers: the lock, the temporary directory, the caller's loop).
  for (const auto& [comp, by_phase] : phase) {
    nlohmann::ordered_json pj;
    for (const auto& [name, unused] : phases(ckpt::SaveProfile{})) pj[name + "_s"] = median(by_phase.at(name));
    pj["other_s"] = median(by_phase.at("other"));
    j["save_" + (comp == "none" ? std::string("none") : std::string("zstd")) + "_phases"] = pj;
  }
  // The same ratios from the fastest of the repeats (the shared disk's noise is one-sided).
  auto best = [&](const std::string& a, const std::string& b) {
    return *std::min_element(t[b].begin(), t[b].end()) / *std::min_element(t[a].begin(), t[a].end());
  };
  j["best_save_none_vs_raw_write"] = best("pmamba_save_none", "raw_write");
  j["best_save_none_vs_torch_save"] = best("pmamba_save_none", "torch_save");
  j["best_save_zstd_vs_zstd_alone"] = best("pmamba_save_zstd:1", "zstd_alone");
  j["best_load_none_vs_raw_read"] = best("pmamba_load_none", "raw_read");
  j["best_load_none_vs_torch_load"] = best("pmamba_load_none", "torch_load");
  j["zstd_compression_ratio"] = static_cast<double>(bytes) / stored["zstd:1"];
  // Memory a save needs beyond the state it saves, as a multiple of the state's size:
  // (state + extra) / state. Loads allocate the state, so theirs is extra / state.
  j["save_none_peak_rss_vs_state"] = 1.0 + median(peak["pmamba_save_none"]) / state_mb;
  j["save_zstd_peak_rss_vs_state"] = 1.0 + median(peak["pmamba_save_zstd:1"]) / state_mb;
  j["torch_save_peak_rss_vs_state"] = 1.0 + median(peak["torch_save"]) / state_mb;
  j["load_none_peak_rss_vs_state"] = median(peak["pmamba_load_none"]) / state_mb;
  j["load_zstd_peak_rss_vs_state"] = median(peak["pmamba_load_zstd:1"]) / state_mb;
  j["torch_load_peak_rss_vs_state"] = median(peak["torch_load"]) / state_mb;
  std::printf("%s\n", j.dump().c_str());
  if (!o.keep) ckpt::fs::remove_tree(dir);
  return 0;
}

void write_trained_checkpoint(const std::string& root, const std::string& preset, int pp,
                              const std::string& compression, int threads) {
  State s = make_state(preset);
  const auto stages = model::make_stages(s.config.n_layer, pp, "");
  ckpt::SaveOptions so;
  so.write.compression = ckpt::Compression::parse(compression);
  so.write.threads = threads;
  ckpt::save_checkpoint(root, 1000, s.config, stages, pp::initial_train_state(1, 1000), so, [&](const model::StageSpec& spec) {
    // Slice the whole-model state down to what this stage owns.
    ckpt::StageData all = pp::collect_stage(*s.model, s.optim.get());
    ckpt::StageData mine;
    for (auto& t : all.tensors) {
      for (const auto& p : model::list_parameters(s.config)) {
        if (p.fqn == t.fqn && model::stage_owns(p, spec)) mine.tensors.push_back(t);
      }
    }
    if (spec.is_last() && s.config.tie_embeddings) {
      for (auto& a : all.aliases) {
        a.target_file = spec.is_first() ? "" : ckpt::shard_file_name(0, spec.num_stages);
        mine.aliases.push_back(a);
      }
    }
    return mine;
  });
}

int run_ckpt_load(const CkptBenchOptions& o, const std::string& what) {
  kernels::set_threads(o.threads);
  const model::MambaConfig config = model::preset(o.preset);
  const std::string dir = o.dir;
  double peak = 0;
  const double before = rss_mb();
  const double secs = timed([&] {
    if (what == "raw") {
      raw_read(dir + "/raw.bin");
    } else if (what == "torch") {
      std::vector<at::Tensor> back;
      torch::load(back, dir + "/torch.pt");
    } else if (what.rfind("pmamba-", 0) == 0) {
      // What a resume does: build the model and optimizer, load both.
      ckpt::CheckpointReader reader(dir + "/pm-" + what.substr(7), o.threads);
      model::MambaLM m(config, model::whole_model(config.n_layer));
      std::vector<std::pair<std::string, at::Tensor>> named;
      for (const auto& item : m->named_parameters()) named.emplace_back(item.key(), item.value());
      pp::AdamW opt(named, config, {});
      pp::load_stage(reader, *m, &opt);
    } else {
      throw std::runtime_error("unknown load '" + what + "'");
    }
  }, &peak);
  nlohmann::json j{{"seconds", secs}, {"peak_mb", peak}, {"rss_before_mb", before}};
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace pmamba::bench
