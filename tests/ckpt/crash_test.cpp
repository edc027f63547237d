// Crash safety: the writer is killed with SIGKILL at every step of the commit protocol and
// at random moments, and runs out of disk; every time the previous checkpoint still loads
// and `latest` names a committed checkpoint.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <random>
#include <thread>

#include "src/ckpt/errors.h"
#include "tests/ckpt/ckpt_test_util.h"
#include "tests/test_util.h"

namespace pmamba::ckpt {
namespace {

std::string writer() { return test::bin_dir() + "/pmamba_ckpt_fault_writer"; }

// The root must hold only committed checkpoints (plus stale temporaries), `latest` must name
// one of them, and every committed one must load with all digests intact. Returns latest's step.
int64_t check_root_consistent(const std::string& root) {
  const std::string dir = resolve_checkpoint_dir(root);
  for (int64_t step : committed_steps(root)) {
    test::load_everything(fs::join(root, step_dir_name(step)));
  }
  test::load_everything(root);
  return CheckpointReader(root).manifest().step;
}

class CrashSafety : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { dir_ = test::temp_dir("crash"); }
  void TearDown() override { test::remove_tree(dir_); }
  std::string dir_;
};

TEST_P(CrashSafety, KilledWriterLeavesPreviousCheckpointLoadable) {
  const std::string point = GetParam();
  const std::string root = dir_ + "/c";
  test::save_tiny(root, 10, "2,2", "zstd");
  const std::string cmd = "PMAMBA_FAULT=" + point + " exec " + writer() + " " + root + " 20 tiny 2 zstd 1 >/dev/null 2>&1";
  const int status = test::run_shell(cmd);
  ASSERT_TRUE(WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == 128 + SIGKILL))
      << "writer was not killed at " << point << " (status " << status << ")";
  const int64_t latest = check_root_consistent(root);
  // Once the step directory is renamed the checkpoint is committed: readers find it even
  // when `latest` was not updated yet.
  const bool committed = point == "dir-renamed" || point == "latest-written" || point == "latest-renamed" ||
                         point == "pruned";
  EXPECT_EQ(latest, committed ? 20 : 10) << point;
  // The next save succeeds and clears whatever the crash left behind.
  test::save_tiny(root, 30, "1,3", "none");
  EXPECT_EQ(check_root_consistent(root), 30);
  for (const auto& name : fs::list_dir(root)) {
    EXPECT_EQ(name.find(".tmp"), std::string::npos) << "stale " << name;
  }
}

INSTANTIATE_TEST_SUITE_P(
    EveryCommitStep, CrashSafety,
    ::testing::Values("shard-partial@0", "shard-partial@1", "shard-written@1", "shard-synced@0", "shard-renamed@0",
                      "shard-renamed@1", "manifest-written", "manifest-renamed", "dir-renamed", "latest-written",
                      "latest-renamed", "pruned"),
    [](const ::testing::TestParamInfo<std::string>& info) {
      std::string n;
      bool up = true;
      for (char ch : info.param) {
        if (ch == '-' || ch == '@') {
          up = true;
          if (ch == '@') n += "Stage";
          continue;
        }
        n += up ? static_cast<char>(std::toupper(ch)) : ch;
        up = false;
      }
      return n;
    });

TEST(CrashSafetyRandom, KilledAtRandomMomentsNeverLosesTheLastCheckpoint) {
  const std::string dir = test::temp_dir("crashr");
  const std::string root = dir + "/c";
  test::save_tiny(root, 1, "4", "none");
  std::mt19937 rng(12345);
  int killed = 0;
  for (int i = 0; i < 8; ++i) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const std::string w = writer(), r = root, step = std::to_string(100 + i);
      ::execl(w.c_str(), w.c_str(), r.c_str(), step.c_str(), "small", "3", i % 2 ? "zstd" : "none", "0",
              static_cast<char*>(nullptr));
      ::_exit(127);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(20, 1500)(rng)));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    killed += WIFSIGNALED(status);
    const int64_t latest = check_root_consistent(root);
    EXPECT_TRUE(latest == 1 || (latest >= 100 && latest <= 100 + i)) << latest;
  }
  EXPECT_GT(killed, 0) << "every writer finished before the kill; the test exercised nothing";
  test::remove_tree(dir);
}

TEST(CrashSafetyDisk, FullDiskFailsClearlyAndKeepsThePreviousCheckpoint) {
  const std::string dir = test::temp_dir("full");
  const std::string root = dir + "/c";
  test::save_tiny(root, 1, "2,2", "none");
  // 2000 KiB file-size limit; SIGXFSZ ignored so writes fail with EFBIG instead of killing.
  const std::string cmd = "ulimit -f 2000; trap '' XFSZ; exec " + writer() + " " + root + " 2 small 2 none 0 >" + dir +
                          "/out 2>" + dir + "/err";
  const int status = test::run_shell("bash -c \"" + cmd + "\"");
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  const std::string err = fs::read_file(dir + "/err");
  EXPECT_NE(err.find("File too large"), std::string::npos) << err;
  EXPECT_EQ(check_root_consistent(root), 1);
  EXPECT_EQ(committed_steps(root), std::vector<int64_t>{1});
  for (const auto& name : fs::list_dir(root)) EXPECT_EQ(name.find(".tmp"), std::string::npos) << name;
  test::remove_tree(dir);
}

}  // namespace
}  // namespace pmamba::ckpt
