// Point-to-point and collective communication between pipeline stages on torch's c10d:
// ProcessGroupGloo for CPU tensors (or CUDA tensors staged through host memory),
// ProcessGroupNCCL for CUDA tensors when LibTorch has it; rendezvous through a TCPStore.
// Callers pass tensors on any device: the transport moves them to where its backend wants them.
// Every wait has a deadline, store operations included (a store whose host stopped answering
// fails them instead of blocking forever); a peer that stops answering (timeout, closed
// connection) becomes a PeerFailure naming the stage (and DP index). Peers are world ranks.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace c10d {
class Work;
}  // namespace c10d

namespace pmamba::pp {

/// Where this process sits, from the launcher's environment: torchrun (RANK, WORLD_SIZE,
/// LOCAL_RANK, MASTER_ADDR, MASTER_PORT), Slurm (SLURM_PROCID, SLURM_STEP_NUM_TASKS,
/// SLURM_LOCALID: srun's tasks, not a batch script's shell) or Open MPI (OMPI_COMM_WORLD_RANK,
/// OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK). A launcher of one process counts as none.
struct DistEnv {
  bool present = false;  // false: no launcher variables (a single process, or spawn our own)
  std::string source;    // "torchrun" | "slurm" | "openmpi"
  int rank = 0;
  int world = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // torchrun's static rendezvous already hosts a TCPStore on MASTER_PORT in its agent
  // (TORCHELASTIC_USE_AGENT_STORE=True), and pmamba's local launcher hosts one for its stages
  // (PMAMBA_STORE_HOST=launcher): every stage then connects as a client (under the key prefix
  // of torchrun's restart attempt) instead of stage 0 hosting one.
  bool agent_store = false;
  std::string store_prefix;             // "/worker/attempt_N" with the agent's store
  std::string store_host = "stage 0";   // who serves the store, for messages
  int dp = 1;  // data-parallel degree (set by the trainer): ranks are named by (stage, dp index)
};

/// How messages name a rank: "stage 2" without data parallelism, "rank 5 (stage 2, dp index 1)"
/// with it.
std::string rank_name(int rank, int dp);
/// Throws UsageError for inconsistent or malformed variables (a rank outside the world, a
/// MASTER_PORT that is not a port, a MASTER_ADDR that is not a valid numeric address).
DistEnv dist_env_from_environment();

/// Resolves MASTER_ADDR; throws UsageError naming it and the resolver's reason when it does not.
void check_master_address(const DistEnv& env);

/// A free TCP port on the loopback interface (for local launches).
int free_port();

/// The store a local launcher serves for its stages (so a stage that stops, or dies, does not
/// take the rendezvous with it), and what the stages reported there.
class LauncherStore {
 public:
  explicit LauncherStore(std::chrono::milliseconds timeout);  // listens on a free loopback port
  ~LauncherStore();
  LauncherStore(const LauncherStore&) = delete;
  LauncherStore& operator=(const LauncherStore&) = delete;
  int port() const;
  /// The failure report of stage `rank` ("" when none); `own` is set to whether it failed on its
  /// own rather than after another stage.
  std::string report(int rank, bool* own);
  /// Records in the store that stage `rank` died (`how`, as the launcher saw it) unless it left
  /// a report of its own. The other stages stop waiting for it within a heartbeat, whatever they
  /// wait in: a wait on this store (which outlives the stage) would otherwise last the timeout.
  void report_gone(int rank, const std::string& how) noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class Transport {
 public:
  /// Rendezvous of `env.world` processes; throws PipelineError when it does not complete
  /// within `timeout` or when the stages disagree on the backend. `backend` is "gloo" or
  /// "nccl" (as resolve_backend returns); NCCL carries tensors on `device`.
  Transport(const DistEnv& env, std::chrono::milliseconds timeout, const std::string& backend = "gloo",
            c10::Device device = c10::Device(c10::kCPU));
  ~Transport();
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  int rank() const { return rank_; }
  int world() const { return world_; }
  std::chrono::milliseconds timeout() const { return timeout_; }

  /// Posts a send without waiting for it (the tensor is kept alive until wait_sends()).
  void isend(const at::Tensor& tensor, int dst, int tag, const std::string& what);
  /// Receives into `tensor` (allocated with the expected shape and dtype), waiting at most the
  /// timeout. `what` names the message in errors ("activation 3").
  void recv(at::Tensor& tensor, int src, int tag, const std::string& what);
  /// Waits for every posted send.
  void wait_sends();
  /// Sum over all ranks, in place, blocking.
  void allreduce_sum(at::Tensor& tensor, const std::string& what);
  void barrier(const std::string& what);
  /// Records in the store that this stage is failing and why (so peers do not blame it, and the
  /// launcher can say what happened); `own` is false when it only followed another stage's
  /// failure. Never throws.
  void report_failure(const std::string& message, bool own) noexcept;
  /// Joins the c10d group of `ranks` (world ranks, ascending, this rank among them): a process
  /// group of the same backend on the same store under a prefix of its own. Every member must
  /// call it, with the same list, before using the group. One group per transport.
  void join_group(const std::vector<int>& ranks);
  /// Sum over the group's ranks, in place, blocking.
  void group_allreduce_sum(at::Tensor& tensor, const std::string& what);
  /// The group's rank `root` (a world rank) sends `tensor` to every other member, in place.
  void group_broadcast(at::Tensor& tensor, int root, const std::string& what);

  /// Rank 0 publishes a string under `key`, every rank returns it.
  std::string broadcast_string(const std::string& key, const std::string& value);

 private:
  [[noreturn]] void peer_failed(int peer, const std::string& what, const std::string& detail);
  void rendezvous(const DistEnv& env);
  // Gives later store operations a short deadline (after a failure, when the store's host may
  // be gone or stopped).
  void shorten_store_deadline() noexcept;
  bool await(c10d::Work& work, const std::string& what, bool sliced);
  void group_collective(at::Tensor& tensor, const std::string& what, int root);  // root -1: all-reduce
  [[noreturn]] void collective_failed(const std::string& what, const std::string& detail);
  std::string missing_peers();
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_ = 0, world_ = 1, dp_ = 1;
  bool agent_store_ = false;
  std::string store_host_;  // who serves the store ("stage 0", "the launcher", "the torchrun agent")
  std::chrono::milliseconds timeout_;
};

}  // namespace pmamba::pp
