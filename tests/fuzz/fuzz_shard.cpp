// Shards and manifests that disagree, built through the HDF5 API from the fuzzer's bytes: a
// valid checkpoint (written once by pmamba) is copied and edited - root and dataset attributes
// rewritten with other types and values (fixed or variable-length strings, integers, reals,
// arrays, empty dataspaces), datasets replaced with other storage types, shapes, layouts and
// filters (garbage zstd chunks included), objects added or removed, manifest fields changed -
// and then opened by every reader: CheckpointReader (and loading every tensor), verify,
// ShardReader, reshard and diff. Each must accept the checkpoint or refuse it with a
// documented error; a crash, a sanitizer report or another exception is a finding.
//
// The containers are valid HDF5 (HDF5 wrote them), so what is tested is pmamba's handling of
// everything HDF5 hands back; raw byte mutations of containers are fuzz_shard_raw's.
#include <ATen/ATen.h>
#include <hdf5.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "src/ckpt/checkpoint.h"
#include "src/ckpt/diff.h"
#include "src/ckpt/h5.h"
#include "src/ckpt/reshard.h"
#include "src/ckpt/resources.h"
#include "src/ckpt/verify.h"
#include "src/ckpt/zstd_filter.h"
#include "src/model/fqn.h"
#include "src/pp/optim.h"
#include "src/pp/state.h"
#include "tests/fuzz/fuzz_util.h"

using namespace pmamba;
using ojson = nlohmann::ordered_json;
namespace h5 = pmamba::ckpt::h5;
namespace stdfs = std::filesystem;

namespace {

struct Template {
  std::string root, step;                    // the checkpoint root and its step directory
  std::vector<std::string> files;            // shard file names
  std::vector<std::vector<std::string>> datasets;  // per shard: dataset paths
};
std::vector<Template> g_templates;

// A micro model at PP 2 with (zero) AdamW state and tied embeddings, written by pmamba.
Template make_template(const std::string& name, const std::string& compression) {
  const model::MambaConfig c = fuzz::micro_config(2);
  const auto stages = model::make_stages(c.n_layer, 2, "");
  ckpt::SaveOptions o;
  o.write.compression = ckpt::Compression::parse(compression);
  o.write.chunk_bytes = 64;  // several chunks per tensor, edge chunks included
  o.write.threads = 1;
  Template t;
  t.root = fuzz::scratch("template-" + name);
  t.step = ckpt::save_checkpoint(t.root, 3, c, stages, pp::initial_train_state(5, 3), o, [&](const model::StageSpec& s) {
    model::MambaLM m(c, s);
    m->init_parameters(5);
    return pp::collect_stage(*m, nullptr);
  });
  const ckpt::CheckpointReader r(t.step);
  for (const auto& s : r.manifest().stages) {
    for (const auto& f : s.files) {
      t.files.push_back(f.file);
      std::vector<std::string> paths;
      ckpt::ShardReader shard(t.step + "/" + f.file);
      for (const auto& d : shard.scan()) paths.push_back(d.path);
      t.datasets.push_back(paths);
    }
  }
  return t;
}

void copy_tree(const std::string& from, const std::string& to) {
  stdfs::copy(from, to, stdfs::copy_options::recursive | stdfs::copy_options::overwrite_existing);
}

std::string mutated(fuzz::Input& in, const std::string& known) {
  switch (in.byte() % 4) {
    case 0: return known;
    case 1: {
      std::string s = known;
      if (!s.empty()) s[in.below(s.size())] = static_cast<char>(in.byte());
      return s;
    }
    case 2: return known.substr(0, in.below(known.size() + 1));
    default: return in.text(64);
  }
}

// Writes attribute `name` of `obj` with a type and value chosen by the input.
void write_attr(hid_t obj, const std::string& name, fuzz::Input& in, const std::string& known) {
  if (H5Aexists(obj, name.c_str()) > 0) H5Adelete(obj, name.c_str());
  h5::Handle scalar(H5Screate(H5S_SCALAR));
  switch (in.byte() % 7) {
    case 0: {
      const int64_t v = in.pick(std::vector<int64_t>{0, 1, 2, 3, -1, -100, INT64_MAX, INT64_MIN, 1 << 30});
      h5::Handle a(H5Acreate2(obj, name.c_str(), H5T_STD_I64LE, scalar.get(), H5P_DEFAULT, H5P_DEFAULT));
      H5Awrite(a.get(), H5T_NATIVE_INT64, &v);
      break;
    }
    case 1: {
      const double v = in.pick(std::vector<double>{1.5, 2.0, -0.5, 1e300, NAN});
      h5::Handle a(H5Acreate2(obj, name.c_str(), H5T_IEEE_F64LE, scalar.get(), H5P_DEFAULT, H5P_DEFAULT));
      H5Awrite(a.get(), H5T_NATIVE_DOUBLE, &v);
      break;
    }
    case 2:
    case 3:
      h5::write_attr(obj, name, mutated(in, known));  // fixed-length, as pmamba writes
      break;
    case 4: {
      const std::string v = mutated(in, known);
      h5::Handle t(H5Tcopy(H5T_C_S1));
      H5Tset_size(t.get(), H5T_VARIABLE);
      h5::Handle a(H5Acreate2(obj, name.c_str(), t.get(), scalar.get(), H5P_DEFAULT, H5P_DEFAULT));
      const char* p = v.c_str();
      H5Awrite(a.get(), t.get(), &p);
      break;
    }
    case 5: {
      const hsize_t dims[1] = {2};
      const int64_t v[2] = {static_cast<int64_t>(in.u64()), 7};
      h5::Handle space(H5Screate_simple(1, dims, nullptr));
      h5::Handle a(H5Acreate2(obj, name.c_str(), H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT));
      H5Awrite(a.get(), H5T_NATIVE_INT64, v);
      break;
    }
    default: {
      h5::Handle null_space(H5Screate(H5S_NULL));
      h5::Handle a(H5Acreate2(obj, name.c_str(), H5T_STD_I64LE, null_space.get(), H5P_DEFAULT, H5P_DEFAULT));
      break;
    }
  }
}

// Replaces (or adds) the dataset at `path` with one whose type, shape, layout, filters, data
// and attributes come from the input.
void write_dataset(hid_t file, const std::string& path, fuzz::Input& in) {
  H5Ldelete(file, path.c_str(), H5P_DEFAULT);
  const std::vector<hid_t> types = {H5T_IEEE_F32LE, H5T_IEEE_F64LE, H5T_STD_U16LE, H5T_STD_I64LE, H5T_STD_I32LE,
                                    H5T_STD_U8LE};
  const hid_t type = in.pick(types);
  const int rank = static_cast<int>(in.below(4));
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  const int layout = static_cast<int>(in.below(3));  // contiguous, chunked, compact
  bool big = false;
  for (auto& d : dims) {
    d = in.pick(std::vector<hsize_t>{0, 1, 2, 3, 8, 16, 64, hsize_t{1} << 20, hsize_t{1} << 40});
    big = big || d >= (hsize_t{1} << 20);
  }
  h5::Handle space(rank == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(rank, dims.data(), nullptr));
  h5::Handle dcpl(H5Pcreate(H5P_DATASET_CREATE));
  hsize_t elements = 1;
  for (auto d : dims) elements *= d;
  if (layout == 1 && rank > 0) {
    std::vector<hsize_t> chunk(dims);
    for (auto& c : chunk) c = std::max<hsize_t>(1, std::min<hsize_t>(c, 1 + in.below(8)));
    H5Pset_chunk(dcpl.get(), rank, chunk.data());
    const int filters = static_cast<int>(in.below(5));
    if (filters == 1 || filters == 3) H5Pset_shuffle(dcpl.get());
    if (filters >= 2 && filters <= 3) {
      const unsigned level = static_cast<unsigned>(in.below(4));
      H5Pset_filter(dcpl.get(), ckpt::kZstdFilterId, H5Z_FLAG_MANDATORY, 1, &level);
    }
    if (filters == 4) H5Pset_deflate(dcpl.get(), 1);
  } else if (layout == 2 && !big && elements * 8 < 60000) {
    H5Pset_layout(dcpl.get(), H5D_COMPACT);
  }
  h5::Handle lcpl(H5Pcreate(H5P_LINK_CREATE));
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  h5::Handle d(H5Dcreate2(file, path.c_str(), type, space.get(), lcpl.get(), dcpl.get(), H5P_DEFAULT));
  if (!d.valid()) return;
  if (!big && elements <= 4096 && in.flip()) {
    std::vector<uint8_t> bytes(elements * 8);
    for (auto& b : bytes) b = in.byte();
    H5Dwrite(d.get(), type, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes.data());
  } else if (layout == 1 && rank > 0 && in.flip()) {
    // One chunk of arbitrary stored bytes: a garbage zstd frame, a short one, an empty one.
    const std::string raw = in.text(256);
    std::vector<hsize_t> offset(static_cast<size_t>(rank), 0);
    H5Dwrite_chunk(d.get(), H5P_DEFAULT, static_cast<uint32_t>(in.below(4)), offset.data(), raw.size(), raw.data());
  }
  write_attr(d.get(), "dtype", in,
             in.pick(std::vector<std::string>{"float32", "float64", "bfloat16", "float16", "int64", "int32"}));
  write_attr(d.get(), "xxh3_64", in, "0123456789abcdef");
}

// A value for a manifest field: usually plausible, often not.
ojson json_value(fuzz::Input& in, const ojson& was) {
  switch (in.byte() % 12) {
    case 0: return was;
    case 1: return static_cast<int64_t>(in.below(8));
    case 2: return -static_cast<int64_t>(in.below(1000)) - 1;
    case 3: return INT64_MAX;
    case 4: return UINT64_MAX;
    case 5: return 64.5;
    case 6: return nullptr;
    case 7: return in.text(40);
    case 8: return in.flip();
    case 9: return ojson::array({static_cast<int64_t>(in.below(70)), static_cast<int64_t>(in.below(70))});
    case 10: return ojson::object();
    default: {
      ojson v = was;
      if (v.is_number_integer()) return v.get<int64_t>() + static_cast<int64_t>(in.below(3)) - 1;
      return was;
    }
  }
}

void edit_manifest(ojson& m, fuzz::Input& in) {
  std::vector<std::string> fqns;
  for (auto it = m["tensors"].begin(); it != m["tensors"].end(); ++it) fqns.push_back(it.key());
  const std::string fqn = in.pick(fqns);
  const std::string slot = in.pick(std::vector<std::string>{"param", "exp_avg", "exp_avg_sq", "step"});
  ojson* target = nullptr;
  std::string key;
  switch (in.byte() % 10) {
    case 0: target = &m; key = in.pick(std::vector<std::string>{"format_version", "run_id", "step", "compression",
                                                                 "has_optimizer", "train_xxh3_64", "format"}); break;
    case 1: target = &m["layout"]; key = in.pick(std::vector<std::string>{"num_stages", "partition"}); break;
    case 2: target = &m["layout"]["stages"][in.below(2)]; key = in.pick(std::vector<std::string>{"stage", "layers", "file", "bytes"}); break;
    case 3: target = &m["tensors"][fqn]; key = in.pick(std::vector<std::string>{"stage", "file", "alias_of"}); break;
    case 4:
      if (!m["tensors"][fqn].contains(slot)) return;
      target = &m["tensors"][fqn][slot];
      key = in.pick(std::vector<std::string>{"shape", "dtype", "xxh3_64", "raw_bytes", "stored_bytes", "path"});
      break;
    case 5: target = &m["train"]; key = in.pick(std::vector<std::string>{"step", "seed", "samples_consumed", "data", "batch"}); break;
    case 6: target = &m["config"]; key = in.pick(std::vector<std::string>{"d_model", "n_layer", "vocab_size", "tie_embeddings", "dt_rank"}); break;
    case 7: m["tensors"].erase(fqn); return;
    case 8: m["tensors"]["backbone.layers." + std::to_string(in.below(4)) + ".mixer.D"] = m["tensors"][fqn]; return;
    default: m[in.text(8)] = json_value(in, nullptr); return;
  }
  if (in.byte() % 8 == 0) {
    target->erase(key);
  } else {
    (*target)[key] = json_value(in, target->contains(key) ? (*target)[key] : ojson());
  }
}

void read_everything(const std::string& step) {
  fuzz::expect_clean("CheckpointReader", [&] {
    ckpt::CheckpointReader r(step, 1);
    std::vector<ckpt::ReadRequest> requests;
    for (const auto& t : r.manifest().tensors) {
      for (const auto& kv : r.manifest().resolve(t.fqn).slots) requests.push_back({t.fqn, kv.first, at::Tensor()});
    }
    r.read_many(requests);
  });
  fuzz::expect_clean("verify_checkpoint", [&] { ckpt::verify_checkpoint(step, ckpt::VerifyOptions{true, 1}); });
  for (const auto& entry : stdfs::directory_iterator(step)) {
    if (entry.path().extension() != ".h5") continue;
    fuzz::expect_clean("ShardReader", [&] {
      ckpt::ShardReader shard(entry.path().string());
      shard.aliases();
      for (const auto& d : shard.scan()) {
        if (d.raw_bytes > (1 << 20)) continue;  // the readers bound allocations by the manifest
        at::Tensor t = ckpt::allocate(d.shape, ckpt::dtype_from_name(d.dtype), d.path);
        fuzz::expect_clean("ShardReader::read", [&] { shard.read(d, t, nullptr); });
      }
    });
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  h5::Silence quiet;
  ckpt::register_zstd_filter();
  g_templates.push_back(make_template("zstd", "zstd:1"));
  g_templates.push_back(make_template("none", "none"));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  h5::Silence quiet;
  fuzz::Input in(data, size);
  const Template& t = g_templates[in.below(g_templates.size())];
  const std::string root = fuzz::scratch("work");
  copy_tree(t.root, root);
  const std::string step = root + "/" + stdfs::path(t.step).filename().string();
  ojson manifest = ojson::parse(ckpt::fs::read_file(step + "/manifest.json"));
  const int edits = static_cast<int>(in.below(5));
  for (int e = 0; e < edits; ++e) {
    const size_t f = in.below(t.files.size());
    const std::string shard = step + "/" + t.files[f];
    const std::vector<std::string>& paths = t.datasets[f];
    const int kind = static_cast<int>(in.below(6));
    if (kind == 5) {
      edit_manifest(manifest, in);
      continue;
    }
    h5::Handle file(H5Fopen(shard.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    if (!file.valid()) continue;
    switch (kind) {
      case 0: {
        h5::Handle g(H5Gopen2(file.get(), "/", H5P_DEFAULT));
        const std::string name = in.pick(std::vector<std::string>{"format", "format_version", "stage", "num_stages",
                                                                  "layer_begin", "layer_end", "step", "config", "train",
                                                                  "compression", "aliases", "unknown"});
        const std::string known = name == "format" ? "pmamba-ckpt" : name == "config" ? manifest["config"].dump()
                                  : name == "train" ? manifest["train"].dump() : name == "aliases" ? "{}" : "2";
        write_attr(g.get(), name, in, known);
        break;
      }
      case 1: {
        h5::Handle d(H5Dopen2(file.get(), in.pick(paths).c_str(), H5P_DEFAULT));
        if (d.valid()) write_attr(d.get(), in.pick(std::vector<std::string>{"dtype", "xxh3_64"}), in, "float32");
        break;
      }
      case 2: write_dataset(file.get(), in.pick(paths), in); break;
      case 3: {  // an object the manifest does not know, or a link somewhere
        const std::string path = in.pick(std::vector<std::string>{"/model/backbone/extra", "/optim/x/exp_avg",
                                                                  "/train/thing", "/model/" + in.text(12), "/elsewhere"});
        h5::Handle lcpl(H5Pcreate(H5P_LINK_CREATE));
        H5Pset_create_intermediate_group(lcpl.get(), 1);
        switch (in.below(4)) {
          case 0: write_dataset(file.get(), path, in); break;
          case 1: H5Gclose(H5Gcreate2(file.get(), path.c_str(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT)); break;
          case 2: H5Lcreate_soft(in.pick(paths).c_str(), file.get(), path.c_str(), lcpl.get(), H5P_DEFAULT); break;
          default: H5Lcreate_hard(file.get(), in.pick(paths).c_str(), file.get(), path.c_str(), lcpl.get(), H5P_DEFAULT); break;
        }
        break;
      }
      default:  // something removed
        if (in.flip()) {
          H5Ldelete(file.get(), in.pick(paths).c_str(), H5P_DEFAULT);
        } else {
          h5::Handle g(H5Gopen2(file.get(), "/", H5P_DEFAULT));
          H5Adelete(g.get(), in.pick(std::vector<std::string>{"format", "format_version", "config", "train", "aliases"}).c_str());
        }
        break;
    }
  }
  // Mostly keep the recorded sizes and the training-state digest right, so the checks behind
  // them are reached.
  if (in.below(8) != 0) {
    for (size_t i = 0; i < t.files.size(); ++i) {
      if (manifest["layout"]["stages"].is_array() && i < manifest["layout"]["stages"].size() &&
          manifest["layout"]["stages"][i].is_object()) {
        manifest["layout"]["stages"][i]["bytes"] = ckpt::fs::file_size(step + "/" + t.files[i]);
      }
    }
  }
  if (in.below(2) == 0 && manifest.contains("train")) {
    manifest["train_xxh3_64"] = ckpt::digest_hex(ckpt::train_digest(manifest["train"]));
  }
  // Strings from the input may be invalid UTF-8; a manifest file may hold such bytes too.
  fuzz::write_bytes(step + "/manifest.json", manifest.dump(-1, ' ', false, ojson::error_handler_t::ignore));
  read_everything(step);
  fuzz::expect_no_open_hdf5_ids("the readers");
  // The writers that read: a quarter of the inputs (they cost most of the time).
  if (in.below(4) != 0) return 0;
  fuzz::expect_clean("reshard", [&] {
    ckpt::ReshardOptions o;
    o.in = step;
    o.out = root + "-resharded";
    ckpt::fs::remove_tree(o.out);
    o.pp = 1;
    o.threads = 1;
    o.compression = in.flip() ? "keep" : "none";
    ckpt::reshard(o);
  });
  fuzz::expect_clean("diff", [&] { ckpt::diff_checkpoints(step, t.step, ckpt::DiffOptions{}); });
  fuzz::expect_no_open_hdf5_ids("reshard and diff");
  return 0;
}
