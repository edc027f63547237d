// The only file that includes c10d: constructors and Work types differ between LibTorch 1.13
// and 2.x, and their use is isolated here. ProcessGroupNCCL exists only in CUDA builds of
// LibTorch (which define USE_C10D_NCCL), all of them 2.x.
#include "src/pp/transport.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>

#include "src/pp/errors.h"

namespace pmamba::pp {

std::string rank_name(int rank, int dp) {
  if (dp <= 1) return "stage " + std::to_string(rank);
  return "rank " + std::to_string(rank) + " (stage " + std::to_string(rank / dp) + ", dp index " + std::to_string(rank % dp) + ")";
}

namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

int env_int(const char* name, int fallback) {
  const char* v = env(name);
  if (!v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < 0 || x > 1 << 24) {
    throw UsageError(std::string("environment variable ") + name + "='" + v + "' is not a valid number");
  }
  return static_cast<int>(x);
}

constexpr int kHeartbeatMs = 500;

std::string seconds(std::chrono::milliseconds ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", static_cast<double>(ms.count()) / 1000.0);
  return buf;
}

std::string first_line(const std::string& s) {
  const size_t nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

// The cause the local launcher records for a stage that died without a report of its own.
constexpr const char* kGoneCause = "gone";

// A stage's failure report in the store: its first line and its cause ("own", "peer", or
// kGoneCause when the launcher wrote it because the stage died without saying why).
struct Report {
  std::string text;
  std::string cause;
  bool gone() const { return cause == kGoneCause; }
};

// Stage r's report; false when it has none. Its writers set "cause/<r>" before "failed/<r>".
bool read_report(c10d::Store& store, int r, Report* out) {
  const std::string key = "failed/" + std::to_string(r), ckey = "cause/" + std::to_string(r);
  if (!store.check({key})) return false;
  const std::vector<uint8_t> msg = store.get(key);
  out->text = first_line(std::string(msg.begin(), msg.end()));
  out->cause.clear();
  if (store.check({ckey})) {
    const std::vector<uint8_t> c = store.get(ckey);
    out->cause.assign(c.begin(), c.end());
  }
  return true;
}

// How a stage says that another one gave up on its own and why (from its failure report), or
// that it died, as the launcher saw.
PeerFailure gave_up(int stage, int waiter, const std::string& what, const Report& report, int dp) {
  if (report.gone()) {
    return PeerFailure(rank_name(stage, dp) + " stopped answering (" + report.text + "): " + rank_name(waiter, dp) +
                       " waited for " + what);
  }
  return PeerFailure(rank_name(stage, dp) + " gave up while " + rank_name(waiter, dp) +
                     " waited for " + what + "; it reported: " + report.text);
}

// The deadline of a heartbeat's store operation, and of any after a failure: a live store
// answers in milliseconds, so a few seconds of silence means its host is gone or stopped.
constexpr std::chrono::milliseconds kShortStoreDeadline{2000};

}  // namespace

DistEnv dist_env_from_environment() {
  DistEnv e;
  if (env("RANK") && env("WORLD_SIZE")) {
    e.source = "torchrun";
    e.rank = env_int("RANK", 0);
    e.world = env_int("WORLD_SIZE", 1);
    e.local_rank = env_int("LOCAL_RANK", e.rank);
  } else if (env("SLURM_PROCID") && env("SLURM_STEP_NUM_TASKS")) {
    // srun sets SLURM_STEP_NUM_TASKS for the tasks of a job step; a batch script's own shell
    // has SLURM_PROCID and SLURM_NTASKS too, and a plain `pmamba-train --pp N` there must
    // start its own stages rather than wait for N-1 processes that will never come.
    e.source = "slurm";
    e.rank = env_int("SLURM_PROCID", 0);
    e.world = env_int("SLURM_STEP_NUM_TASKS", 1);
    e.local_rank = env_int("SLURM_LOCALID", 0);
  } else if (env("OMPI_COMM_WORLD_RANK") && env("OMPI_COMM_WORLD_SIZE")) {
    e.source = "openmpi";
    e.rank = env_int("OMPI_COMM_WORLD_RANK", 0);
    e.world = env_int("OMPI_COMM_WORLD_SIZE", 1);
    e.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
  } else {
    return e;
  }
  // A launcher that started one process (torchrun --nproc-per-node 1, srun -n 1) has nothing
  // to pair it with: the process is on its own, and --pp N starts N local stages as usual.
  if (e.world == 1 && e.rank == 0) return DistEnv{};
  e.present = true;
  if (env("MASTER_ADDR")) e.master_addr = env("MASTER_ADDR");
  // Numeric addresses are checked here (256.1.1.1 is no address); names are resolved when the
  // rank starts (check_master_address).
  const std::string& a = e.master_addr;
  const bool numeric4 = a.find_first_not_of("0123456789.") == std::string::npos;
  const bool numeric6 = a.find(':') != std::string::npos;
  unsigned char buf[sizeof(in6_addr)];
  if (numeric4 && ::inet_pton(AF_INET, a.c_str(), buf) != 1) {
    throw UsageError("MASTER_ADDR='" + a + "' is not a valid IPv4 address");
  }
  if (numeric6 && ::inet_pton(AF_INET6, a.c_str(), buf) != 1) {
    throw UsageError("MASTER_ADDR='" + a + "' is not a valid IPv6 address");
  }
  if (const char* port = env("MASTER_PORT")) {
    char* end = nullptr;
    const long p = std::strtol(port, &end, 10);
    if (*end != '\0' || p < 1 || p > 65535) {
      throw UsageError(std::string("MASTER_PORT='") + port + "' is not a TCP port (1 to 65535)");
    }
    e.master_port = static_cast<int>(p);
  }
  if (e.source == "torchrun" && env("TORCHELASTIC_USE_AGENT_STORE") &&
      std::string(env("TORCHELASTIC_USE_AGENT_STORE")) == "True") {
    e.agent_store = true;
    e.store_host = "the torchrun agent";
    e.store_prefix = std::string("/worker/attempt_") + std::to_string(env_int("TORCHELASTIC_RESTART_COUNT", 0));
  }
  if (env("PMAMBA_STORE_HOST") && std::string(env("PMAMBA_STORE_HOST")) == "launcher") {
    e.agent_store = true;
    e.store_host = "the launcher";
  }
  if (e.world < 1 || e.rank >= e.world) {
    throw UsageError("launcher variables (" + e.source + ") give rank " + std::to_string(e.rank) + " of world size " +
                     std::to_string(e.world));
  }
  if (e.world > 1 && e.source != "torchrun" && !env("MASTER_ADDR")) {
    throw UsageError("MASTER_ADDR must name rank 0's host when launching with " + e.source);
  }
  return e;
}

void check_master_address(const DistEnv& e) {
  if (!e.present) return;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = ::getaddrinfo(e.master_addr.c_str(), nullptr, &hints, &res);
  if (res) ::freeaddrinfo(res);
  if (rc != 0) {
    throw UsageError("MASTER_ADDR='" + e.master_addr + "' does not resolve to an address (" + ::gai_strerror(rc) +
                     "): it must name the host that serves the rendezvous store");
  }
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw PipelineError("cannot create a socket to find a free port");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(fd);
    throw PipelineError("cannot find a free port on 127.0.0.1");
  }
  const int port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

struct Transport::Impl {
  int64_t collectives = 0;  // sequence number of the collective calls (the same on every rank)
  c10::intrusive_ptr<c10d::Store> store;
  std::string rdzv_key;                  // this rank's key: "rdzv/<rank>"
  // A store operation that timed out leaves its connection out of step (the late answer would
  // be read as the next one's): after that the store is not used again.
  std::atomic<bool> store_dead{false};
  // Heartbeat: a thread with its own store connection bumps "heartbeat/<rank>" periodically.
  std::thread heart;
  std::atomic<bool> stop{false};
  bool failed = false;                  // a wait failed: tear the communicators down, don't drain
  // A failure another stage reported in the store, seen by the heartbeat thread, which also
  // aborts the send or receive the main thread is blocked in (`waiting`) so it stops at once.
  std::mutex mu;
  int report_stage = -1;                // who reported, and its report
  Report report;
  std::atomic<bool> reported{false};
  c10d::Work* waiting = nullptr;
  c10::Device device{c10::kCPU};       // where the backend wants its tensors
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
  c10::intrusive_ptr<c10d::ProcessGroupGloo::Options> gloo_options;
  // The one subgroup (join_group): its members' world ranks and its process group.
  std::vector<int> group_ranks;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group_gloo;
#ifdef USE_C10D_NCCL
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> group_nccl;
#endif
#ifdef USE_C10D_NCCL
  // One communicator per direction. NCCL has no tags: it pairs the sends and receives between
  // two ranks in the order they were issued, on one stream per communicator. 1F1B sends an
  // activation down before it receives a gradient while its neighbour does the reverse, so on
  // one shared communicator each would wait for the other. Per direction, both ends issue their
  // messages in the same order (check_schedule proves it), so nothing can cross.
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> down, up;
#endif
  struct Pending {
    c10::intrusive_ptr<c10d::Work> work;
    at::Tensor tensor;
    int peer;
    std::string what;
  };
  std::deque<Pending> sends;

  // The tensor as the backend wants it (on its device, contiguous).
  at::Tensor wire(const at::Tensor& t) const { return t.to(device).contiguous(); }

  c10::intrusive_ptr<c10d::Work> send(std::vector<at::Tensor>& ts, int self, int dst, int tag) {
#ifdef USE_C10D_NCCL
    if (down) return (dst > self ? down : up)->send(ts, dst, tag);
#endif
    (void)self;
    return gloo->send(ts, dst, tag);
  }
  c10::intrusive_ptr<c10d::Work> recv(std::vector<at::Tensor>& ts, int self, int src, int tag) {
#ifdef USE_C10D_NCCL
    if (down) return (src < self ? down : up)->recv(ts, src, tag);
#endif
    (void)self;
    return gloo->recv(ts, src, tag);
  }
  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>& ts) {
#ifdef USE_C10D_NCCL
    if (down) return down->allreduce(ts);
#endif
    return gloo->allreduce(ts);
  }
};

// Every store connection gets its deadline from a wait: c10d's TCPStore arms the socket's
// receive timeout (SO_RCVTIMEO) only inside wait(), and without it an operation on a store
// whose host is stopped (SIGSTOP, a hung machine) blocks forever.
void arm_deadline(c10d::Store& store, const std::string& key, std::chrono::milliseconds deadline) {
  store.wait({key}, deadline);
}

Transport::Transport(const DistEnv& e, std::chrono::milliseconds timeout, const std::string& backend,
                     c10::Device device)
    : impl_(std::make_unique<Impl>()), rank_(e.rank), world_(e.world), dp_(std::max(1, e.dp)), agent_store_(e.agent_store), timeout_(timeout) {
  if (backend != "gloo" && backend != "nccl") throw UsageError("unknown c10d backend '" + backend + "'");
  if (backend == "nccl" && !device.is_cuda()) throw UsageError("the NCCL backend needs a CUDA device");
#ifndef USE_C10D_NCCL
  if (backend == "nccl") throw UsageError("this LibTorch was built without ProcessGroupNCCL");
#endif
  impl_->device = backend == "nccl" ? device : c10::Device(c10::kCPU);
  impl_->rdzv_key = "rdzv/" + std::to_string(e.rank);
  store_host_ = e.store_host;
  std::string mismatch;
  const std::string address = e.master_addr + ":" + std::to_string(e.master_port);
  auto stop_heart = [&] {
    impl_->stop.store(true);
    if (impl_->heart.joinable()) impl_->heart.join();
  };
  try {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<uint16_t>(e.master_port);
    opts.isServer = e.rank == 0 && !e.agent_store;
    opts.numWorkers = c10::nullopt;
    opts.waitWorkers = false;  // rendezvous() waits, and can name who is missing
    opts.timeout = timeout;
    // pmamba's keys under the agent's attempt prefix, or at the root of the store.
    auto scoped = [&](c10::intrusive_ptr<c10d::Store> tcp) -> c10::intrusive_ptr<c10d::Store> {
      if (e.store_prefix.empty()) return c10::make_intrusive<c10d::PrefixStore>("pmamba", tcp);
      return c10::make_intrusive<c10d::PrefixStore>(
          "pmamba", c10::make_intrusive<c10d::PrefixStore>(e.store_prefix, tcp));
    };
    c10::intrusive_ptr<c10d::Store> tcp;
    try {
      tcp = c10::make_intrusive<c10d::TCPStore>(e.master_addr, opts);
    } catch (const std::exception& ex) {
      if (opts.isServer) {
        throw PipelineError("stage 0 cannot serve the rendezvous store on port " + std::to_string(e.master_port) + ": " +
                            first_line(ex.what()));
      }
      throw PeerFailure(rank_name(e.rank, e.dp) + " could not reach the rendezvous store at " + address +
                        " (served by " + e.store_host + ") within " + seconds(timeout) + " s: " + first_line(ex.what()) +
                        (e.store_host == "stage 0" ? " (did stage 0 start?)" : ""));
    }
    impl_->store = scoped(tcp);
    rendezvous(e);
    // Every stage must use the same backend, or the process groups below would wait for
    // each other until the timeout; compare first through the store.
    impl_->store->set("backend/" + std::to_string(e.rank), std::vector<uint8_t>(backend.begin(), backend.end()));
    for (int r = 0; r < e.world && mismatch.empty(); ++r) {
      const std::vector<uint8_t> b = impl_->store->get("backend/" + std::to_string(r));
      if (std::string(b.begin(), b.end()) != backend) {
        mismatch = rank_name(r, e.dp) + " uses the " + std::string(b.begin(), b.end()) +
                   " backend but " + rank_name(e.rank, e.dp) + " uses " + backend +
                   "; all stages must be started with the same --device and --backend";
      }
    }
    if (mismatch.empty() && backend == "gloo") {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      if (const char* ifname = env("GLOO_SOCKET_IFNAME")) {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      } else if (e.master_addr == "127.0.0.1" || e.master_addr == "localhost") {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else {
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      impl_->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, e.rank, e.world, options);
      impl_->gloo_options = options;
    }
#ifdef USE_C10D_NCCL
    if (mismatch.empty() && backend == "nccl") {
      auto make = [&](const char* prefix) {
        auto options = c10d::ProcessGroupNCCL::Options::create();
        // NCCL's watchdog aborts the process when an operation outlives this; give our own
        // wait (same timeout, below) the chance to name the stage first.
        options->timeout = timeout + std::chrono::seconds(60);
        return c10::make_intrusive<c10d::ProcessGroupNCCL>(
            c10::make_intrusive<c10d::PrefixStore>(prefix, impl_->store), e.rank, e.world, options);
      };
      impl_->down = make("nccl-down");
      impl_->up = make("nccl-up");
    }
#endif
    c10d::TCPStoreOptions client = opts;
    client.isServer = false;
    auto beat_store = scoped(c10::make_intrusive<c10d::TCPStore>(e.master_addr, client));
    arm_deadline(*beat_store, impl_->rdzv_key, kShortStoreDeadline);
    Impl* impl = impl_.get();
    const std::string key = "heartbeat/" + std::to_string(e.rank);
    const int rank = e.rank, world = e.world;
    impl_->heart = std::thread([impl, beat_store, key, rank, world] {
      while (!impl->stop.load()) {
        try {
          beat_store->add(key, 1);
          for (int r = 0; r < world && !impl->reported.load(); ++r) {
            Report rep;
            if (r == rank || !read_report(*beat_store, r, &rep)) continue;
            std::lock_guard<std::mutex> lock(impl->mu);
            impl->report_stage = r;
            impl->report = rep;
            impl->reported.store(true);
            if (impl->waiting) {
              try {
                impl->waiting->abort();  // only sends and receives wait here; collectives are sliced
              } catch (...) {
              }
            }
          }
        } catch (...) {
          return;  // the store is gone or stopped answering; the main thread will notice
        }
        for (int i = 0; i < 10 && !impl->stop.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(kHeartbeatMs / 10));
      }
    });
  } catch (const PipelineError&) {
    stop_heart();
    throw;
  } catch (const std::exception& ex) {
    stop_heart();
    throw PipelineError("rendezvous of " + std::to_string(e.world) + " stages at " + address + " failed for " +
                        rank_name(e.rank, e.dp) + ": " + first_line(ex.what()));
  }
  if (!mismatch.empty()) {
    stop_heart();
    throw PipelineError(mismatch);
  }
}

void Transport::rendezvous(const DistEnv& e) {
  using Clock = std::chrono::steady_clock;
  const auto until = Clock::now() + timeout_;
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  const std::string me = std::string(host) + " pid " + std::to_string(::getpid());
  impl_->store->set(impl_->rdzv_key, std::vector<uint8_t>(me.begin(), me.end()));
  arm_deadline(*impl_->store, impl_->rdzv_key, timeout_);
  while (true) {
    std::vector<int> missing;
    for (int r = 0; r < e.world; ++r) {
      if (!impl_->store->check({"rdzv/" + std::to_string(r)})) missing.push_back(r);
    }
    if (missing.empty()) return;
    if (Clock::now() >= until) {
      std::string names;
      for (size_t i = 0; i < missing.size(); ++i) names += (i ? ", " : "") + std::to_string(missing[i]);
      throw PipelineError(rank_name(e.rank, e.dp) + " waited " + seconds(timeout_) + " s for " +
                          (e.dp > 1 ? "rank" : "stage") + (missing.size() == 1 ? " " : "s ") + names + " of " + std::to_string(e.world) +
                          " to join the rendezvous at " + e.master_addr + ":" + std::to_string(e.master_port) +
                          " (not started, or exited before joining)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

void Transport::shorten_store_deadline() noexcept {
  if (impl_->store_dead.load() || !impl_->store) return;
  try {
    arm_deadline(*impl_->store, impl_->rdzv_key, kShortStoreDeadline);
  } catch (...) {
    impl_->store_dead.store(true);
  }
}

Transport::~Transport() {
  // After a failure the other stages read heartbeats and failure reports from the store to name
  // the stage that stopped answering; when stage 0 serves that store, its exit would make them
  // blame stage 0. Keep serving until every other stage has reported its own failure (a dead
  // one never will: at most a few heartbeats).
  if (impl_->failed && rank_ == 0 && !agent_store_ && world_ > 1 && !impl_->store_dead.load()) {
    using Clock = std::chrono::steady_clock;
    const auto until = Clock::now() + std::chrono::milliseconds(8 * kHeartbeatMs);
    try {
      std::vector<int64_t> beat(static_cast<size_t>(world_), -1);
      std::vector<Clock::time_point> moved(static_cast<size_t>(world_), Clock::now());
      while (Clock::now() < until) {
        bool waiting = false;
        for (int r = 1; r < world_; ++r) {
          if (impl_->store->check({"failed/" + std::to_string(r)})) continue;  // reported
          const int64_t b = impl_->store->add("heartbeat/" + std::to_string(r), 0);
          if (b != beat[r]) {
            beat[r] = b;
            moved[r] = Clock::now();
          }
          // Still beating (a dead stage stops within a few heartbeats): it may yet ask.
          if (Clock::now() - moved[r] < std::chrono::milliseconds(3 * kHeartbeatMs)) waiting = true;
        }
        if (!waiting) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(kHeartbeatMs / 5));
      }
    } catch (...) {
    }
  }
  impl_->stop.store(true);
  if (impl_->heart.joinable()) impl_->heart.join();
  // Sends still pending belong to a step that failed; let them go without waiting.
  impl_->sends.clear();
#ifdef USE_C10D_NCCL
  // After a failure NCCL kernels may wait forever for a peer that is gone: abort them.
  for (auto& pg : {impl_->down, impl_->up, impl_->group_nccl}) {
    if (!pg) continue;
    try {
      if (impl_->failed) {
        pg->abort();
      } else {
        pg->shutdown();
      }
    } catch (...) {
    }
  }
#endif
}

void Transport::peer_failed(int peer, const std::string& what, const std::string& detail) {
  impl_->failed = true;
  shorten_store_deadline();
  // A peer that failed on its own reported why before it went away: pass that on.
  try {
    if (impl_->store_dead.load()) throw std::runtime_error("the store stopped answering");
    Report rep;
    if (read_report(*impl_->store, peer, &rep)) throw gave_up(peer, rank_, what, rep, dp_);
  } catch (const PipelineError&) {
    throw;
  } catch (const std::exception&) {
    impl_->store_dead.store(true);
    // The store is gone too: whoever serves it (stage 0, the launcher or torchrun's agent) went
    // first, and the peer may only have followed it.
    if (!agent_store_ && peer != 0) {
      throw PeerFailure(rank_name(0, dp_) + " stopped answering (its rendezvous store is unreachable) and so did " +
                        rank_name(peer, dp_) + ": " + rank_name(rank_, dp_) + " waited for " + what + ": " +
                        first_line(detail));
    }
  }
  throw PeerFailure(rank_name(peer, dp_) + " stopped answering: " + rank_name(rank_, dp_) +
                    " waited for " + what + " (timeout " + seconds(timeout_) + " s): " + first_line(detail));
}

void Transport::isend(const at::Tensor& tensor, int dst, int tag, const std::string& what) {
  std::vector<at::Tensor> ts{impl_->wire(tensor)};
  try {
    auto work = impl_->send(ts, rank_, dst, tag);
    impl_->sends.push_back({work, ts[0], dst, what});
  } catch (const std::exception& ex) {
    peer_failed(dst, "sending " + what, ex.what());
  }
}

void Transport::recv(at::Tensor& tensor, int src, int tag, const std::string& what) {
  const bool direct = tensor.device() == impl_->device && tensor.is_contiguous();
  std::vector<at::Tensor> ts{direct ? tensor : at::empty(tensor.sizes(), tensor.options().device(impl_->device))};
  try {
    auto work = impl_->recv(ts, rank_, src, tag);
    if (!await(*work, what, false)) peer_failed(src, what, "timed out");
    if (!direct) tensor.copy_(ts[0]);
  } catch (const PipelineError&) {
    throw;
  } catch (const std::exception& ex) {
    peer_failed(src, what, ex.what());
  }
}

// Waits for `work` up to the timeout. A failure another stage reports stops the wait within a
// heartbeat, with that stage's reason: the heartbeat thread aborts a pending send or receive,
// and a collective (which cannot be aborted) is waited for in heartbeat-long slices. Otherwise
// a stage blocked on a live peer would learn of a failure elsewhere only at its own timeout, or
// when the store's host exits, and blame the wrong stage. Returns false on timeout; throws what
// the work threw, or PipelineError with the report.
bool Transport::await(c10d::Work& work, const std::string& what, bool sliced) {
  auto reported = [&]() {
    if (!impl_->reported.load()) return;
    impl_->failed = true;
    std::lock_guard<std::mutex> lock(impl_->mu);
    throw gave_up(impl_->report_stage, rank_, what, impl_->report, dp_);
  };
  if (!impl_->gloo) return work.wait(timeout_);
  reported();
  if (!sliced) {
    {
      std::lock_guard<std::mutex> lock(impl_->mu);
      impl_->waiting = &work;
    }
    struct Clear {
      Impl* impl;
      ~Clear() {
        std::lock_guard<std::mutex> lock(impl->mu);
        impl->waiting = nullptr;
      }
    } clear{impl_.get()};
    bool done = false;
    try {
      done = work.wait(timeout_);
    } catch (const std::exception&) {
      reported();
      throw;
    }
    reported();
    return done;
  }
  using Clock = std::chrono::steady_clock;
  const auto until = Clock::now() + timeout_;
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
    if (left.count() <= 0) return false;
    try {
      if (work.wait(std::min(left, std::chrono::milliseconds(kHeartbeatMs)))) return true;
    } catch (const std::exception&) {
      if (work.isCompleted()) throw;  // the operation failed; a slice that ran out leaves it pending
    }
    reported();
  }
}

void Transport::wait_sends() {
  while (!impl_->sends.empty()) {
    Impl::Pending p = impl_->sends.front();
    impl_->sends.pop_front();
    try {
      if (!await(*p.work, "sending " + p.what, false)) peer_failed(p.peer, "sending " + p.what, "timed out");
    } catch (const PipelineError&) {
      throw;
    } catch (const std::exception& ex) {
      peer_failed(p.peer, "sending " + p.what, ex.what());
    }
  }
}

// After a failed collective the survivors find out who is gone from the heartbeats every stage
// keeps in the store: a stage whose counter stops moving (and which did not report a failure
// of its own) is the one that stopped answering. A stage blocked in a collective keeps beating.
std::string Transport::missing_peers() {
  shorten_store_deadline();
  try {
    if (impl_->store_dead.load()) throw std::runtime_error("the store stopped answering");
    auto beats = [&]() {
      std::vector<int64_t> v(static_cast<size_t>(world_));
      for (int r = 0; r < world_; ++r) v[r] = impl_->store->add("heartbeat/" + std::to_string(r), 0);
      return v;
    };
    const std::vector<int64_t> before = beats();
    std::this_thread::sleep_for(std::chrono::milliseconds(3 * kHeartbeatMs));
    const std::vector<int64_t> after = beats();
    std::string names;
    for (int r = 0; r < world_; ++r) {
      if (r == rank_ || after[r] != before[r] || impl_->store->check({"failed/" + std::to_string(r)})) continue;
      names += (names.empty() ? "" : ", ") + rank_name(r, dp_);
    }
    return names;
  } catch (const std::exception&) {
    impl_->store_dead.store(true);
    return store_host_ + " (its rendezvous store is unreachable)";
  }
}

void Transport::report_failure(const std::string& message, bool own) noexcept {
  impl_->failed = true;
  shorten_store_deadline();
  if (impl_->store_dead.load() || !impl_->store) return;
  try {
    const std::string cause = own ? "own" : "peer";
    impl_->store->set("cause/" + std::to_string(rank_), std::vector<uint8_t>(cause.begin(), cause.end()));
    impl_->store->set("failed/" + std::to_string(rank_), std::vector<uint8_t>(message.begin(), message.end()));
  } catch (...) {
    impl_->store_dead.store(true);
  }
}

void Transport::allreduce_sum(at::Tensor& tensor, const std::string& what) {
  const bool direct = tensor.device() == impl_->device && tensor.is_contiguous();
  std::vector<at::Tensor> ts{direct ? tensor : impl_->wire(tensor)};
  const int64_t seq = impl_->collectives++;
  std::string detail;
  try {
    auto work = impl_->allreduce(ts);
    if (await(*work, what, true)) {
      if (!direct) tensor.copy_(ts[0]);
      return;
    }
    detail = "timed out";
  } catch (const PipelineError&) {
    throw;  // another stage's report, already naming who gave up
  } catch (const std::exception& ex) {
    detail = first_line(ex.what());
  }
  (void)seq;
  collective_failed(what, detail);
}

// After a collective failed (world or group): who went silent, or, when nobody did, the report
// of a rank that gave up on its own (it closed its connections, and its report says why).
void Transport::collective_failed(const std::string& what, const std::string& detail) {
  impl_->failed = true;
  const std::string who = missing_peers();
  if (who.empty() && !impl_->store_dead.load()) {
    try {
      for (int r = 0; r < world_; ++r) {
        Report rep;
        if (r != rank_ && read_report(*impl_->store, r, &rep)) throw gave_up(r, rank_, what, rep, dp_);
      }
    } catch (const PipelineError&) {
      throw;
    } catch (const std::exception&) {
    }
  }
  throw PeerFailure((who.empty() ? std::string("a peer") : who) + " stopped answering: " +
                    rank_name(rank_, dp_) + " waited during " + what + " (timeout " + seconds(timeout_) + " s): " + detail);
}

void Transport::join_group(const std::vector<int>& ranks) {
  const auto me = std::find(ranks.begin(), ranks.end(), rank_);
  if (me == ranks.end() || !impl_->group_ranks.empty()) throw PipelineError("internal: bad process-group membership");
  impl_->group_ranks = ranks;
  const int index = static_cast<int>(me - ranks.begin()), size = static_cast<int>(ranks.size());
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>("group-" + std::to_string(ranks.front()), impl_->store);
  try {
    if (impl_->gloo) {
      impl_->group_gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, index, size, impl_->gloo_options);
    }
#ifdef USE_C10D_NCCL
    if (impl_->down) {
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout_ + std::chrono::seconds(60);
      impl_->group_nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, index, size, options);
    }
#endif
  } catch (const std::exception& ex) {
    impl_->failed = true;
    const std::string who = missing_peers();
    throw PeerFailure(rank_name(rank_, dp_) + " could not form its data-parallel group" +
                      (who.empty() ? std::string() : " (" + who + " stopped answering)") + ": " + first_line(ex.what()));
  }
}

// A collective on the group, waited for like the world's (sliced, so a failure reported
// elsewhere stops it within a heartbeat); a member that stopped answering is named.
void Transport::group_collective(at::Tensor& tensor, const std::string& what, int root) {
  if (impl_->group_ranks.empty()) throw PipelineError("internal: no process group joined");
  const bool direct = tensor.device() == impl_->device && tensor.is_contiguous();
  std::vector<at::Tensor> ts{direct ? tensor : impl_->wire(tensor)};
  std::string detail;
  try {
    c10::intrusive_ptr<c10d::Work> work;
    if (root < 0) {
      c10d::AllreduceOptions ar;
#ifdef USE_C10D_NCCL
      if (impl_->group_nccl) work = impl_->group_nccl->allreduce(ts, ar);
#endif
      if (!work) work = impl_->group_gloo->allreduce(ts, ar);
    } else {
      c10d::BroadcastOptions b;
      const auto it = std::find(impl_->group_ranks.begin(), impl_->group_ranks.end(), root);
      b.rootRank = static_cast<int64_t>(it - impl_->group_ranks.begin());
#ifdef USE_C10D_NCCL
      if (impl_->group_nccl) work = impl_->group_nccl->broadcast(ts, b);
#endif
      if (!work) work = impl_->group_gloo->broadcast(ts, b);
    }
    if (await(*work, what, true)) {
      if (!direct) tensor.copy_(ts[0]);
      return;
    }
    detail = "timed out";
  } catch (const PipelineError&) {
    throw;
  } catch (const std::exception& ex) {
    detail = first_line(ex.what());
  }
  collective_failed(what, detail);
}

void Transport::group_allreduce_sum(at::Tensor& tensor, const std::string& what) { group_collective(tensor, what, -1); }

void Transport::group_broadcast(at::Tensor& tensor, int root, const std::string& what) {
  group_collective(tensor, what, root);
}

void Transport::barrier(const std::string& what) {
  at::Tensor one = at::ones({1}, at::kInt);
  allreduce_sum(one, what);
}

std::string Transport::broadcast_string(const std::string& key, const std::string& value) {
  std::string detail = "timed out";
  try {
    if (rank_ == 0) impl_->store->set(key, std::vector<uint8_t>(value.begin(), value.end()));
    // Polled rather than one blocking get, so that a stage which gave up (its report, seen by
    // the heartbeat thread) is named at once, with its reason, instead of after the timeout.
    const auto until = std::chrono::steady_clock::now() + timeout_;
    while (std::chrono::steady_clock::now() < until) {
      if (impl_->store->check({key})) {
        const std::vector<uint8_t> got = impl_->store->get(key);
        return std::string(got.begin(), got.end());
      }
      if (impl_->reported.load()) {
        impl_->failed = true;
        std::lock_guard<std::mutex> lock(impl_->mu);
        throw gave_up(impl_->report_stage, rank_, "'" + key + "'", impl_->report, dp_);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  } catch (const PipelineError&) {
    throw;
  } catch (const std::exception& ex) {
    detail = first_line(ex.what());
    impl_->store_dead.store(true);
  }
  impl_->failed = true;
  if (detail == "timed out") {
    throw PeerFailure("stage 0 did not publish '" + key + "' within the timeout: " + rank_name(rank_, dp_) +
                      " gave up waiting");
  }
  throw PeerFailure(store_host_ + " stopped answering (its rendezvous store is unreachable): " +
                    rank_name(rank_, dp_) + " waited for '" + key + "': " + detail);
}

// ---- the launcher's store ----

struct LauncherStore::Impl {
  c10::intrusive_ptr<c10d::TCPStore> tcp;
  c10::intrusive_ptr<c10d::Store> store;
};

LauncherStore::LauncherStore(std::chrono::milliseconds timeout) : impl_(std::make_unique<Impl>()) {
  c10d::TCPStoreOptions opts;
  opts.port = 0;  // any free port: no window in which another process could take it
  opts.isServer = true;
  opts.numWorkers = c10::nullopt;
  opts.waitWorkers = false;
  opts.timeout = timeout;
  try {
    impl_->tcp = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", opts);
  } catch (const std::exception& ex) {
    throw PipelineError(std::string("cannot serve a rendezvous store on 127.0.0.1: ") + first_line(ex.what()));
  }
  impl_->store = c10::make_intrusive<c10d::PrefixStore>("pmamba", impl_->tcp);
}

LauncherStore::~LauncherStore() = default;

int LauncherStore::port() const { return impl_->tcp->getPort(); }

std::string LauncherStore::report(int rank, bool* own) {
  try {
    Report rep;
    // What the launcher itself recorded for a stage that died is not that stage's report.
    if (!read_report(*impl_->store, rank, &rep) || rep.gone()) return "";
    if (own) *own = rep.cause != "peer";
    return rep.text;
  } catch (const std::exception&) {
    return "";
  }
}

void LauncherStore::report_gone(int rank, const std::string& how) noexcept {
  try {
    if (impl_->store->check({"failed/" + std::to_string(rank)})) return;  // it said why itself
    const std::string cause = kGoneCause;
    impl_->store->set("cause/" + std::to_string(rank), std::vector<uint8_t>(cause.begin(), cause.end()));
    impl_->store->set("failed/" + std::to_string(rank), std::vector<uint8_t>(how.begin(), how.end()));
  } catch (...) {
  }
}

}  // namespace pmamba::pp
