// The only file that includes c10d: constructors and Work types differ between LibTorch 1.13
// and 2.x, and their use is isolated here.
#include "src/pp/transport.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdlib>
#include <atomic>
#include <deque>
#include <thread>

#include "src/pp/errors.h"

namespace pmamba::pp {

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

std::string first_line(const std::string& s) {
  const size_t nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

}  // namespace

DistEnv dist_env_from_environment() {
  DistEnv e;
  if (env("RANK") && env("WORLD_SIZE")) {
    e.source = "torchrun";
    e.rank = env_int("RANK", 0);
    e.world = env_int("WORLD_SIZE", 1);
    e.local_rank = env_int("LOCAL_RANK", e.rank);
  } else if (env("SLURM_PROCID") && env("SLURM_NTASKS")) {
    e.source = "slurm";
    e.rank = env_int("SLURM_PROCID", 0);
    e.world = env_int("SLURM_NTASKS", 1);
    e.local_rank = env_int("SLURM_LOCALID", 0);
  } else if (env("OMPI_COMM_WORLD_RANK") && env("OMPI_COMM_WORLD_SIZE")) {
    e.source = "openmpi";
    e.rank = env_int("OMPI_COMM_WORLD_RANK", 0);
    e.world = env_int("OMPI_COMM_WORLD_SIZE", 1);
    e.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
  } else {
    return e;
  }
  e.present = true;
  if (env("MASTER_ADDR")) e.master_addr = env("MASTER_ADDR");
  e.master_port = env_int("MASTER_PORT", 29500);
  if (e.world < 1 || e.rank >= e.world) {
    throw UsageError("launcher variables (" + e.source + ") give rank " + std::to_string(e.rank) + " of world size " +
                     std::to_string(e.world));
  }
  if (e.world > 1 && e.source != "torchrun" && !env("MASTER_ADDR")) {
    throw UsageError("MASTER_ADDR must name rank 0's host when launching with " + e.source);
  }
  return e;
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
  // Heartbeat: a thread with its own store connection bumps "heartbeat/<rank>" periodically.
  std::thread heart;
  std::atomic<bool> stop{false};
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
  struct Pending {
    c10::intrusive_ptr<c10d::Work> work;
    at::Tensor tensor;
    int peer;
    std::string what;
  };
  std::deque<Pending> sends;
};

Transport::Transport(const DistEnv& e, std::chrono::milliseconds timeout)
    : impl_(std::make_unique<Impl>()), rank_(e.rank), world_(e.world), timeout_(timeout) {
  try {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<uint16_t>(e.master_port);
    opts.isServer = e.rank == 0;
    opts.numWorkers = static_cast<size_t>(e.world);
    opts.waitWorkers = true;
    opts.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(e.master_addr, opts);
    impl_->store = c10::make_intrusive<c10d::PrefixStore>("pmamba", tcp);
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    if (const char* ifname = env("GLOO_SOCKET_IFNAME")) {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else if (e.master_addr == "127.0.0.1" || e.master_addr == "localhost") {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    impl_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, e.rank, e.world, options);
    c10d::TCPStoreOptions client = opts;
    client.isServer = false;
    client.numWorkers = c10::nullopt;
    client.waitWorkers = false;
    auto beat_store = c10::make_intrusive<c10d::PrefixStore>(
        "pmamba", c10::make_intrusive<c10d::TCPStore>(e.master_addr, client));
    Impl* impl = impl_.get();
    const std::string key = "heartbeat/" + std::to_string(e.rank);
    impl_->heart = std::thread([impl, beat_store, key] {
      while (!impl->stop.load()) {
        try {
          beat_store->add(key, 1);
        } catch (...) {
          return;  // the store (stage 0) is gone; the main thread will notice on its own
        }
        for (int i = 0; i < 10 && !impl->stop.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(kHeartbeatMs / 10));
      }
    });
  } catch (const std::exception& ex) {
    throw PipelineError("rendezvous of " + std::to_string(e.world) + " stages at " + e.master_addr + ":" +
                        std::to_string(e.master_port) + " failed for stage " + std::to_string(e.rank) + ": " +
                        first_line(ex.what()));
  }
}

Transport::~Transport() {
  impl_->stop.store(true);
  if (impl_->heart.joinable()) impl_->heart.join();
  // Sends still pending belong to a step that failed; let them go without waiting.
  impl_->sends.clear();
}

void Transport::peer_failed(int peer, const std::string& what, const std::string& detail) {
  // A peer that failed on its own reported why before it went away: pass that on.
  try {
    const std::string key = "failed/" + std::to_string(peer);
    if (impl_->store->check({key})) {
      const std::vector<uint8_t> msg = impl_->store->get(key);
      throw PipelineError("stage " + std::to_string(peer) + " gave up while stage " + std::to_string(rank_) +
                          " waited for " + what + "; it reported: " + first_line(std::string(msg.begin(), msg.end())));
    }
  } catch (const PipelineError&) {
    throw;
  } catch (const std::exception&) {
  }
  throw PipelineError("stage " + std::to_string(peer) + " stopped answering: stage " + std::to_string(rank_) +
                      " waited for " + what + " (timeout " + std::to_string(timeout_.count() / 1000.0).substr(0, 5) +
                      " s): " + first_line(detail));
}

void Transport::isend(const at::Tensor& tensor, int dst, int tag, const std::string& what) {
  std::vector<at::Tensor> ts{tensor.contiguous()};
  try {
    auto work = impl_->pg->send(ts, dst, tag);
    impl_->sends.push_back({work, ts[0], dst, what});
  } catch (const std::exception& ex) {
    peer_failed(dst, "sending " + what, ex.what());
  }
}

void Transport::recv(at::Tensor& tensor, int src, int tag, const std::string& what) {
  std::vector<at::Tensor> ts{tensor};
  try {
    auto work = impl_->pg->recv(ts, src, tag);
    if (!work->wait(timeout_)) peer_failed(src, what, "timed out");
  } catch (const PipelineError&) {
    throw;
  } catch (const std::exception& ex) {
    peer_failed(src, what, ex.what());
  }
}

void Transport::wait_sends() {
  while (!impl_->sends.empty()) {
    Impl::Pending p = impl_->sends.front();
    impl_->sends.pop_front();
    try {
      if (!p.work->wait(timeout_)) peer_failed(p.peer, "sending " + p.what, "timed out");
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
  try {
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
      names += (names.empty() ? "stage " : ", stage ") + std::to_string(r);
    }
    return names;
  } catch (const std::exception&) {
    return "stage 0 (its rendezvous store is unreachable)";
  }
}

void Transport::report_failure(const std::string& message) noexcept {
  try {
    impl_->store->set("failed/" + std::to_string(rank_), std::vector<uint8_t>(message.begin(), message.end()));
  } catch (...) {
  }
}

void Transport::allreduce_sum(at::Tensor& tensor, const std::string& what) {
  std::vector<at::Tensor> ts{tensor};
  const int64_t seq = impl_->collectives++;
  std::string detail;
  try {
    auto work = impl_->pg->allreduce(ts);
    if (work->wait(timeout_)) return;
    detail = "timed out";
  } catch (const std::exception& ex) {
    detail = first_line(ex.what());
  }
  (void)seq;
  const std::string who = missing_peers();
  throw PipelineError((who.empty() ? std::string("a peer") : who) + " stopped answering: stage " +
                      std::to_string(rank_) + " waited during " + what + " (timeout " +
                      std::to_string(timeout_.count() / 1000.0).substr(0, 5) + " s): " + detail);
}

void Transport::barrier(const std::string& what) {
  at::Tensor one = at::ones({1}, at::kInt);
  allreduce_sum(one, what);
}

std::string Transport::broadcast_string(const std::string& key, const std::string& value) {
  try {
    if (rank_ == 0) impl_->store->set(key, std::vector<uint8_t>(value.begin(), value.end()));
    const std::vector<uint8_t> got = impl_->store->get(key);
    return std::string(got.begin(), got.end());
  } catch (const std::exception& ex) {
    throw PipelineError("stage " + std::to_string(rank_) + ": store exchange of '" + key + "' failed: " +
                        first_line(ex.what()));
  }
}

}  // namespace pmamba::pp
