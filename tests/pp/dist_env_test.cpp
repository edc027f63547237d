#include <gtest/gtest.h>
#include <stdlib.h>

#include <map>
#include <string>

#include "src/pp/errors.h"
#include "src/pp/transport.h"

namespace pmamba::pp {
namespace {

// Sets exactly the given launcher variables for one test and clears every other one the
// detection reads, so the machine's own environment (a Slurm allocation, say) cannot leak in.
class LauncherEnv {
 public:
  explicit LauncherEnv(const std::map<std::string, std::string>& vars) {
    for (const char* name : kNames) unsetenv(name);
    for (const auto& [k, v] : vars) setenv(k.c_str(), v.c_str(), 1);
  }
  ~LauncherEnv() {
    for (const char* name : kNames) unsetenv(name);
  }

 private:
  static constexpr const char* kNames[] = {
      "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE",
      "TORCHELASTIC_RESTART_COUNT", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID",
      "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"};
};

TEST(DistEnv, NoLauncherVariablesMeanOneProcessOnItsOwn) {
  LauncherEnv env({});
  EXPECT_FALSE(dist_env_from_environment().present);
}

TEST(DistEnv, ReadsTorchrunVariables) {
  LauncherEnv env({{"RANK", "2"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "0"}, {"MASTER_ADDR", "10.0.0.7"},
                   {"MASTER_PORT", "29511"}});
  const DistEnv e = dist_env_from_environment();
  EXPECT_TRUE(e.present);
  EXPECT_EQ(e.source, "torchrun");
  EXPECT_EQ(e.rank, 2);
  EXPECT_EQ(e.world, 4);
  EXPECT_EQ(e.local_rank, 0);
  EXPECT_EQ(e.master_addr, "10.0.0.7");
  EXPECT_EQ(e.master_port, 29511);
  EXPECT_FALSE(e.agent_store);
}

TEST(DistEnv, JoinsTheTorchrunAgentsStoreUnderTheAttemptPrefix) {
  LauncherEnv env({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "29500"},
                   {"TORCHELASTIC_USE_AGENT_STORE", "True"}, {"TORCHELASTIC_RESTART_COUNT", "3"}});
  const DistEnv e = dist_env_from_environment();
  EXPECT_TRUE(e.agent_store);
  EXPECT_EQ(e.store_prefix, "/worker/attempt_3");
}

TEST(DistEnv, ReadsAnSrunStep) {
  LauncherEnv env({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}, {"SLURM_STEP_NUM_TASKS", "2"},
                   {"SLURM_LOCALID", "1"}, {"MASTER_ADDR", "node7"}});
  const DistEnv e = dist_env_from_environment();
  EXPECT_TRUE(e.present);
  EXPECT_EQ(e.source, "slurm");
  EXPECT_EQ(e.rank, 1);
  EXPECT_EQ(e.world, 2);
  EXPECT_EQ(e.local_rank, 1);
}

TEST(DistEnv, ABatchScriptShellIsNotALaunch) {
  // sbatch's shell carries the allocation's task count but is not one of srun's tasks.
  LauncherEnv env({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "0"}});
  EXPECT_FALSE(dist_env_from_environment().present);
}

TEST(DistEnv, ALauncherOfOneProcessLeavesItOnItsOwn) {
  {
    LauncherEnv env({{"RANK", "0"}, {"WORLD_SIZE", "1"}});
    EXPECT_FALSE(dist_env_from_environment().present);
  }
  {
    LauncherEnv env({{"SLURM_PROCID", "0"}, {"SLURM_STEP_NUM_TASKS", "1"}, {"SLURM_NTASKS", "1"}});
    EXPECT_FALSE(dist_env_from_environment().present);
  }
}

TEST(DistEnv, RejectsARankOutsideTheWorld) {
  LauncherEnv env({{"RANK", "4"}, {"WORLD_SIZE", "4"}});
  EXPECT_THROW(dist_env_from_environment(), UsageError);
}

TEST(DistEnv, RejectsSlurmWithoutMasterAddr) {
  LauncherEnv env({{"SLURM_PROCID", "0"}, {"SLURM_STEP_NUM_TASKS", "2"}});
  EXPECT_THROW(dist_env_from_environment(), UsageError);
}

TEST(DistEnv, RejectsMalformedNumbers) {
  LauncherEnv env({{"RANK", "one"}, {"WORLD_SIZE", "2"}});
  EXPECT_THROW(dist_env_from_environment(), UsageError);
}

}  // namespace
}  // namespace pmamba::pp
